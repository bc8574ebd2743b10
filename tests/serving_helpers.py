"""A real ``driftloop serve`` process for tests, and a small synthetic trained project."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from driftloop.pipeline import run
from driftloop.serving.client import BackgroundServer, background_server

__all__ = ["SERVING", "Running", "record", "serving", "stop", "synthetic_project"]

from .helpers import write_spec
from .test_lifecycle import SPEC, land

# A hang guard, not a wait: a server that starts or stops slowly on a busy machine is not a
# failure (at a load of 20 on two cores a start took over a minute).
HANG_GUARD = 600.0

# Serving settings for tests: quick to notice promotions and to flush logs.
SERVING = """
serving:
  workers: 1
  poll_seconds: 2
  events_poll_seconds: 0.1
  log: {flush_seconds: 0.3}
"""


Running = BackgroundServer


@contextmanager
def serving(
    project: Path, *, workers: int | None = None, wait_ready: bool = True
) -> Iterator[Running]:
    """``driftloop serve`` in a subprocess; stopped with SIGTERM (a graceful shutdown)."""
    env = {"OMP_NUM_THREADS": "1"}
    log = project / f"serve-{time.monotonic_ns()}.log"
    with background_server(
        project, log=log, workers=workers, env=env, wait_ready=wait_ready, timeout=HANG_GUARD
    ) as running:
        yield running


def stop(server: Running) -> int:
    """A graceful stop (SIGTERM), waited for up to the hang guard; the exit code (uvicorn
    re-raises the signal: -15). driftloop's own ``stop`` kills after 30 s."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(HANG_GUARD)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


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
