"""Where a stage fans its independent pieces out (drift tests per column, the reference
profile's column groups): the executor an orchestrator installed, or none.

A stage asks :func:`current`; None means "use your own threads", as the built-in loop
always does. The Prefect flow with ``engine: dask`` installs the Dask cluster's executor
for its session (:mod:`driftloop.orchestration.engine`), so the stages need not know about
Dask, and the layers stay as they are (the core holds the slot, orchestration fills it).
Whatever runs on the executor must give the same result as on one thread: each piece is a
pure function of its own inputs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

_lock = threading.Lock()
_current: Executor | None = None


def current() -> Executor | None:
    """The installed executor, or None (fan out on this process's threads)."""
    return _current


@contextmanager
def installed(executor: Executor) -> Iterator[Executor]:
    """``executor`` is :func:`current` for the block (one at a time in a process)."""
    global _current
    with _lock:
        if _current is not None:
            raise RuntimeError("an executor is installed already in this process")
        _current = executor
    try:
        yield executor
    finally:
        with _lock:
            _current = None
