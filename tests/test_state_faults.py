"""The machine's faults, not the project's: a state database locked by another process, and
a full disk. Each ends in one clear line with what to do (exit 5), never a traceback, and
the advice loses nothing: free space (or end the other process), then run again.

The lock is real: a child process holds SQLite's write lock (``BEGIN EXCLUSIVE``) until the
test lets it go. A full state database is real too: SQLite's ``max_page_count`` makes the
file unable to grow, which SQLite reports exactly as a full disk (SQLITE_FULL). Only the
``OSError(ENOSPC)`` of an output write is injected, at the output store's write edge, since
filling this machine's disk is not possible in a test.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from driftloop.cli import EXIT_RETRY_LATER, app
from driftloop.core.errors import DiskFullError, StateLockedError, TransientError
from driftloop.core.layout import Layout
from driftloop.core.outputs import LocalOutputStore
from driftloop.core.state import StateDB
from driftloop.core.state_store import file_engine, lock_wait_seconds, resolve_url

from .helpers import write_spec

SPEC = """
name: tiny
task: classification
target: y
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    x1: {dtype: float}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
ingest: {settle_seconds: 0}
"""
CLI = [sys.executable, "-m", "driftloop.cli"]
HANG_GUARD = 600.0  # seconds: only a hung command fails on it
SAFE = "do not move .driftloop/state.db aside"


def project_with_a_file(root: Path) -> Path:
    write_spec(root, SPEC)
    folder = root / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("x1,y\n1.0,yes\n2.0,no\n3.5,no\n", encoding="utf-8")
    StateDB(Layout(root).state_db).close()  # the state database exists, as after a pass
    return root


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[Any]:
    """A child process that takes the state database's write lock and holds it until its
    standard input is closed."""
    project = project_with_a_file(tmp_path / "p")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(Layout(project).state_db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
            "c.execute('ROLLBACK')\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    try:
        yield project, child
    finally:
        if child.poll() is None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(HANG_GUARD)


def test_a_locked_state_database_is_one_clear_line_and_exit_5(lock_holder: Any) -> None:
    project, child = lock_holder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DRIFTLOOP_STATE_LOCK_SECONDS": "1"}
    locked = subprocess.run(
        [*CLI, "run", "-p", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
        check=False,
    )
    assert locked.returncode == EXIT_RETRY_LATER, locked.stdout + locked.stderr
    assert "Traceback" not in locked.stderr, locked.stderr
    [line] = locked.stderr.strip().splitlines()
    assert line.startswith(f"error: {Layout(project).state_db}: the state database is locked")
    assert "Nothing was lost" in line and "run again" in line, line
    status = subprocess.run(
        [*CLI, "status", "-p", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
        check=False,
    )
    # status only reads: in WAL mode a writer's lock does not stop it
    assert status.returncode == 0, status.stderr

    # The lock goes away; the same command now takes the file, once.
    child.stdin.close()
    child.wait(HANG_GUARD)
    again = subprocess.run(
        [*CLI, "run", "-p", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
        check=False,
    )
    assert "ingested 1 new file(s)" in again.stdout, again.stdout + again.stderr
    with StateDB(Layout(project).state_db) as db:
        assert len(db.batches()) == 1


def _full(project: Path) -> Any:
    """Every new connection to the project's state database may not grow the file: SQLite
    then fails a write with SQLITE_FULL, "database or disk is full", as on a full disk."""
    engine = file_engine(resolve_url(Layout(project).state_db))

    def cap(dbapi_conn: Any, _record: Any) -> None:
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(engine, "connect", cap)
    return lambda: sa.event.remove(engine, "connect", cap)


def test_a_full_state_database_says_free_space_and_rerun(tmp_path: Path) -> None:
    project = project_with_a_file(tmp_path / "p")
    undo = _full(project)
    try:
        with StateDB(Layout(project).state_db) as db, pytest.raises(DiskFullError) as caught:
            db.record_event("RetrainRequested", {"reason": "x" * 100_000, "key": "k"})
    finally:
        undo()
    text = str(caught.value)
    assert text.startswith(f"{Layout(project).state_db} (the state database): no space left")
    assert "(database or disk is full)" in text
    assert "free space" in text and SAFE in text


def test_a_full_disk_outside_a_stage_exits_5_and_the_rerun_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with_a_file(tmp_path / "p")

    def no_space(self: StateDB, name: str, value: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(StateDB, "record_fact", no_space)  # injected: see the docstring
        full = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert full.exit_code == EXIT_RETRY_LATER, full.output
    assert "no space left on the device" in full.output and SAFE in full.output
    assert "Traceback" not in full.output
    again = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert again.exit_code != EXIT_RETRY_LATER and "Traceback" not in again.output
    with StateDB(Layout(project).state_db) as db:
        assert len(db.batches()) == 1  # the file was taken once, before and after


def test_a_full_disk_under_an_output_fails_the_stage_with_safe_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with_a_file(tmp_path / "p")

    def no_space(self: LocalOutputStore, attempt: Path, manifest: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(attempt / "manifest.json"))

    with monkeypatch.context() as patched:
        patched.setattr(LocalOutputStore, "seal", no_space)  # injected: see the docstring
        full = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert full.exit_code == 1, full.output  # a stage failed; it is retried
    assert "FAILED prep" in full.output and "no space left on the device" in full.output
    assert "free space on that disk" in full.output and SAFE in full.output
    assert "Traceback" not in full.output
    # Space is back: the next pass runs prep again on the same batch, nothing twice.
    again = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert "prep " in again.output and "3 rows in" in again.output, again.output
    with StateDB(Layout(project).state_db) as db:
        assert len(db.batches()) == 1


def test_the_lock_wait_comes_from_the_environment() -> None:
    assert lock_wait_seconds({}) == 30.0
    assert lock_wait_seconds({"DRIFTLOOP_STATE_LOCK_SECONDS": "2.5"}) == 2.5
    with pytest.raises(Exception, match="DRIFTLOOP_STATE_LOCK_SECONDS='soon': expected"):
        lock_wait_seconds({"DRIFTLOOP_STATE_LOCK_SECONDS": "soon"})
    assert issubclass(StateLockedError, TransientError)  # the loop retries it
