"""A server in the background and steady traffic against it (the demo uses both).

``background_server`` runs ``driftloop serve`` as a child process and stops it gracefully;
``Traffic`` sends /predict requests from a thread at a fixed concurrency and keeps, for each
answer, when it was sent, its status and the model version that answered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BackgroundServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_seconds: float = 0.0
    token: str | None = None  # an API token, sent as a bearer token by client()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers=self.headers)


@contextmanager
def background_server(
    project: Path,
    *,
    log: Path,
    timeout: float = 60.0,
    workers: int | None = None,
    env: dict[str, str] | None = None,  # added to this process's environment
    wait_ready: bool = True,
    token: str | None = None,  # sent by the server's client() and the readiness check
) -> Iterator[BackgroundServer]:
    """``driftloop serve`` for the project on a free port, stopped with SIGTERM on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "driftloop.cli", "serve", "-p", str(project), "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = BackgroundServer(f"http://127.0.0.1:{port}", process, log, token=token)
    try:
        if wait_ready:
            server.ready_seconds = wait_until_ready(server, timeout, started)
        yield server
    finally:
        stop(server)


def wait_until_ready(server: BackgroundServer, timeout: float, started: float) -> float:
    """Seconds from ``started`` (perf_counter) until /ready answered 200."""
    while True:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"driftloop serve exited early ({server.log}):\n{tail}")
        try:
            ready = httpx.get(f"{server.url}/ready", timeout=2, headers=server.headers)
            if ready.status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"driftloop serve was not ready in {timeout:.0f}s; see {server.log}")
        time.sleep(0.05)


def stop(server: BackgroundServer) -> int:
    """A graceful stop (SIGTERM); the exit code (uvicorn re-raises the signal: -15)."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


@dataclass
class Answer:
    sent: float  # time.time()
    seconds: float
    status: int
    version: str | None
    request_id: str | None
    record: int  # index into the traffic's records
    detail: str | None = None  # what a failed request got back


@dataclass
class Traffic:
    """Requests from ``concurrency`` threads, cycling through ``records``, until stopped."""

    url: str
    records: list[dict[str, Any]]
    concurrency: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for _ in range(self.concurrency):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _take(self) -> int:
        with self._lock:
            index = self._next % len(self.records)
            self._next += 1
            return index

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                index = self._take()
                sent, began = time.time(), time.perf_counter()
                try:
                    response = client.post("/predict", json=self.records[index])
                    body = response.json()
                    version = body["model"]["version"] if response.status_code == 200 else None
                    answer = Answer(
                        sent,
                        time.perf_counter() - began,
                        response.status_code,
                        version,
                        body.get("request_id"),
                        index,
                        None if response.status_code == 200 else response.text[:300],
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    answer = Answer(
                        sent, time.perf_counter() - began, -1, None, None, index, repr(exc)
                    )
                with self._lock:
                    self.answers.append(answer)
