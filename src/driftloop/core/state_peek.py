"""A read-only look at the embedded state file, with the standard library's ``sqlite3``.

A ``driftloop run`` on a project with nothing new must answer in a fraction of a second
however long its history (issue 10); importing SQLAlchemy alone takes longer than the rest
of such a pass. So the few reads a settled pass makes (the settled fact, the progress marker,
whether a lease is held or a decision waits) are also made here, on the embedded SQLite file
only. The progress marker is the same statements :class:`~driftloop.core.state.StateDB`
runs (``PROGRESS``: one text for both, so both give the same answer). A server's state
(PostgreSQL) is always read through :class:`~driftloop.core.state.StateDB`.

Nothing here writes but :func:`touch_fact` (the time of a recheck a settled pass made, set
only if no other process changed it): anything out of the ordinary (no file yet, an older
schema, a locked or damaged file) is ``None``, and the caller takes the ordinary path, which
deals with it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 3  # PRAGMA user_version of a current state file (see core/state_store.py)

# A text that changes whenever a batch is formed, a stage run starts or ends, a decision
# is recorded or applied, or a drift or decay is found (the prediction-log monitor's too,
# which the retrain policy acts on) (``repr`` of these rows: see :func:`progress_marker`).
PROGRESS = (
    "SELECT count(*), max(seq) FROM batches",
    "SELECT count(*), sum(attempts), max(started_at), max(finished_at) FROM stage_runs",
    "SELECT count(*), max(id), sum(applied) FROM promotions",
    "SELECT (SELECT max(id) FROM events WHERE type = 'DriftDetected'),"
    " (SELECT max(id) FROM events WHERE type = 'PerformanceDegraded')",
)
FACT = "SELECT value FROM facts WHERE name = ?"
_BUSY = (
    "SELECT (SELECT count(*) FROM leases) + (SELECT count(*) FROM claims)"
    " + (SELECT count(*) FROM promotions WHERE applied = 0)"
)


def progress_marker(rows: list[tuple[object, ...]]) -> str:
    """The marker from the rows of the ``PROGRESS`` statements, in order."""
    return repr([tuple(r) for r in rows])


@dataclass(frozen=True)
class Peek:
    """What a settled pass compares, read in one short read transaction."""

    settled: str | None  # the fact ``settled``
    progress: str  # :func:`progress_marker`
    busy: bool  # a lease or claim is held, or a recorded decision is not applied yet
    checked: str | None = None  # the fact named by ``peek``'s ``checked``, if asked for


def peek(path: Path, fact: str, checked: str | None = None) -> Peek | None:
    """The embedded state file's :class:`Peek`, or None when it cannot simply be read."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            return None
        conn.execute("BEGIN")  # one snapshot for all the reads
        row = conn.execute(FACT, (fact,)).fetchone()
        other = conn.execute(FACT, (checked,)).fetchone() if checked is not None else None
        marker = progress_marker([conn.execute(q).fetchone() for q in PROGRESS])
        busy = bool(conn.execute(_BUSY).fetchone()[0])
        return Peek(
            settled=None if row is None else str(row[0]),
            progress=marker,
            busy=busy,
            checked=None if other is None else str(other[0]),
        )
    except sqlite3.Error:  # locked for longer than a moment, damaged, another schema
        return None
    finally:
        conn.close()


def touch_fact(path: Path, fact: str, was: str, value: str) -> None:
    """Best effort: set a fact of the embedded state file from ``was`` (as read) to
    ``value``, unless another process changed it meanwhile (one short write; a locked or
    read-only file leaves it as it was, and a later pass records it)."""
    try:
        conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        conn.execute("UPDATE facts SET value = ? WHERE name = ? AND value = ?", (value, fact, was))
    except sqlite3.Error:
        pass
    finally:
        conn.close()
