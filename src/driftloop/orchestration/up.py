"""``driftloop up``: the loop and the server together, as two supervised child processes.

``driftloop watch`` and ``driftloop serve`` run as children of one supervisor. A child that
exits on its own is started again after a pause that doubles each time it fails quickly
(up to a minute), and the supervisor says so; Ctrl-C or SIGTERM stops both gracefully
(SIGTERM, then SIGKILL after a grace period) and the supervisor exits.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_SECONDS = 20.0
HEALTHY_AFTER = 30.0  # a child that ran this long resets its restart backoff


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    log: list[str] = field(default_factory=list)


class Supervisor:
    """Keeps its children running until stopped."""

    def __init__(
        self,
        project: Path,
        *,
        serve_args: list[str] | None = None,
        watch_args: list[str] | None = None,
        say: Callable[[str], None] = print,
        env: dict[str, str] | None = None,
    ) -> None:
        cli = [sys.executable, "-m", "driftloop.cli"]
        where = ["-p", str(project)]
        self.children = [
            Child("watch", [*cli, "watch", *where, *(watch_args or [])]),
            Child("serve", [*cli, "serve", *where, *(serve_args or [])]),
        ]
        self.say = say
        self.env = env
        self.stop = threading.Event()

    def run(self) -> None:
        for child in self.children:
            self._start(child)
        while not self.stop.wait(0.2):
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
        self._shutdown()

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(child.args, env=self.env)
        child.started = time.monotonic()
        self.say(f"started {child.name} (pid {child.process.pid})")

    def _check(self, child: Child, now: float) -> None:
        process = child.process
        if process is None:
            if now >= child.next_start:
                child.restarts += 1
                self._start(child)
            return
        code = process.poll()
        if code is None:
            if now - child.started > HEALTHY_AFTER:
                child.backoff = 1.0
            return
        child.process = None
        child.next_start = now + child.backoff
        self.say(f"{child.name} exited with code {code}; starting it again in {child.backoff:.0f}s")
        child.backoff = min(60.0, child.backoff * 2)

    def _shutdown(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, GRACE_SECONDS)
                child.process.kill()
                child.process.wait()
            self.say(f"stopped {child.name}")
