"""A real ``driftloop serve`` process for tests, and a small synthetic trained project."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from driftloop.pipeline import run

from .helpers import write_spec
from .test_lifecycle import SPEC, land

# Serving settings for tests: quick to notice promotions and to flush logs.
SERVING = """
serving:
  workers: 1
  poll_seconds: 2
  events_poll_seconds: 0.1
  log: {flush_seconds: 0.3}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@contextmanager
def serving(
    project: Path, *, workers: int | None = None, wait_ready: bool = True
) -> Iterator[Running]:
    """``driftloop serve`` in a subprocess; stopped with SIGTERM (a graceful shutdown)."""
    port = free_port()
    log = project / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "driftloop.cli", "serve", "-p", str(project), "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Running(f"http://127.0.0.1:{port}", process, log)
    try:
        if wait_ready:
            wait_until_ready(running)
        yield running
    finally:
        stop(running)


def wait_until_ready(running: Running, timeout: float = 60.0) -> float:
    """Seconds until /ready answered 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if running.process.poll() is not None:
            raise AssertionError(f"server exited: {running.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{running.url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not ready in {timeout}s: {running.log.read_text()[-3000:]}")


def stop(running: Running) -> int:
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(30)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()
    return int(running.process.returncode)


def synthetic_project(project: Path, *, versions: int = 2, extra: str = SERVING) -> Path:
    """A trained synthetic classification project with ``versions`` promoted versions."""
    write_spec(project, SPEC + extra)
    for i in range(versions):
        land(project, f"part-{i}.csv", 800, seed=i + 1, start_day=i * 3)
        result = run(project)
        assert not result.failed, [(r.stage, r.error) for r in result.failed]
    return project


def record(
    x1: float = 0.5, x2: float = -0.2, c: str = "a", t: str = "2024-01-05 10:00:00"
) -> dict[str, object]:
    return {"t": t, "x1": x1, "x2": x2, "c": c}
