"""One writer per project: the watch lease."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from driftloop.core.errors import ProjectLockedError
from driftloop.core.state import StateDB
from driftloop.orchestration.lease import Lease


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first, second = Lease(db, seconds=30), Lease(db, seconds=30)
    first.acquire()
    with pytest.raises(ProjectLockedError, match=r"another driftloop process holds this project"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    with StateDB(db) as state:
        assert state.lease("watch") is None


def test_a_lease_whose_holder_died_expires(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    dead = Lease(db, seconds=0.5)
    dead.acquire()
    dead._stop.set()  # the holder stops renewing (as a killed process would)
    time.sleep(0.8)
    successor = Lease(db, seconds=30)
    successor.acquire()
    with StateDB(db) as state:
        assert state.lease("watch")["holder"] == successor.holder  # type: ignore[index]
    successor.release()


def test_the_holder_renews_and_notices_a_takeover(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    holder = Lease(db, seconds=3.0)  # renewed every second
    holder.acquire()
    time.sleep(7.0)  # more than twice the lease: only renewal keeps it
    with pytest.raises(ProjectLockedError):
        Lease(db, seconds=30).acquire()
    with StateDB(db) as state:  # someone forces it away (an operator deleting the row, say)
        state.take_lease("watch", "intruder", 1, "elsewhere", seconds=60, now=time.time() + 10)
    assert holder.lost.wait(300)  # a hang guard: the next renewal notices
    holder.release()
