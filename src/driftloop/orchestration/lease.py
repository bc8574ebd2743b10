"""One writer per project: a lease in the state database that its holder keeps renewing.

``driftloop watch`` takes the lease ``watch`` before it does anything; a second watcher on
the same project finds it held and refuses to start, naming the holder. The holder renews
it from a background thread every third of its duration, so a long training run does not
let it lapse; a holder that dies (even by ``kill -9``) stops renewing, and the lease expires
after ``seconds``, when a new watcher may take it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.core.errors import ProjectLockedError
from driftloop.core.procs import pid_alive
from driftloop.core.state import StateDB, state_where

log = logging.getLogger(__name__)

LEASE_SECONDS = 15.0


class Lease:
    """The project's writer lease, held from :meth:`acquire` to :meth:`release`."""

    def __init__(
        self,
        state_db: Path,
        name: str = "watch",
        seconds: float = LEASE_SECONDS,
        *,
        url: str | None = None,  # the spec's state.url
    ) -> None:
        self.state_db = state_db
        self.url = url
        self.name = name
        self.seconds = seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()  # set when someone else took the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease or raise :class:`ProjectLockedError` naming who holds it.

        A holder on this machine whose process is gone (killed) is not waited for.
        """
        held = self._take()
        if held is not None and held["host"] == socket.gethostname() and not pid_alive(held["pid"]):
            log.warning("taking over the lease of pid %s, which is gone", held["pid"])
            held = self._take(replace=held["holder"])
        if held is not None:
            until = datetime.fromtimestamp(held["expires_at"], UTC).isoformat(timespec="seconds")
            raise ProjectLockedError(
                f"{state_where(self.state_db, self.url)}: another driftloop process holds "
                f"this project (a 'driftloop watch' or 'run', pid {held['pid']} on "
                f"{held['host']}, since {held['acquired_at'][:19]}); a watch takes new files "
                "itself: stop it first to make a pass by hand. If it died, its lease expires "
                f"at {until}."
            )
        self._thread = threading.Thread(target=self._renew, name="driftloop-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self.lost.is_set():
            with StateDB(self.state_db, url=self.url) as db:
                db.drop_lease(self.name, self.holder)

    def _take(self, *, replace: str | None = None) -> dict[str, Any] | None:
        with StateDB(self.state_db, url=self.url) as db:
            return db.take_lease(
                self.name,
                self.holder,
                os.getpid(),
                socket.gethostname(),
                seconds=self.seconds,
                now=time.time(),
                replace=replace,
            )

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                held = self._take()
            except Exception as exc:  # a busy database: try again at the next beat
                log.warning("renewing the lease failed: %s", exc)
                continue
            if held is not None:
                log.error("the project's lease was taken by pid %s; stopping", held["pid"])
                self.lost.set()
                return
