"""The project's state database, ``.driftloop/state.db`` (SQLite in WAL mode).

It holds the ingest ledger (each raw file by content hash, taken exactly once), the
batches those files formed, the stage runs keyed for idempotence, and an append-only event
log. Every write is one short transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.core.errors import StateError

if TYPE_CHECKING:
    from driftloop.core.events import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS raw_files (
    sha256      TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    batch_id    TEXT NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    path      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    seen_at   TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id   TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_runs (
    key         TEXT PRIMARY KEY,
    stage       TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    seconds     REAL,
    output      TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS stage_runs_batch ON stage_runs (stage, batch_id);
CREATE TABLE IF NOT EXISTS current_runs (
    stage     TEXT NOT NULL,
    batch_id  TEXT NOT NULL,
    key       TEXT NOT NULL,
    PRIMARY KEY (stage, batch_id)
);
CREATE TABLE IF NOT EXISTS facts (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS promotions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    ts                TEXT NOT NULL,
    model             TEXT NOT NULL,
    version           TEXT NOT NULL,
    decision          TEXT NOT NULL,
    reason            TEXT NOT NULL,
    metric            TEXT,
    challenger_score  REAL,
    champion_version  TEXT,
    champion_score    REAL,
    baseline_score    REAL,
    actor             TEXT NOT NULL,
    applied           INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      TEXT NOT NULL,
    type    TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  REAL NOT NULL
);
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RawFile:
    sha256: str
    source: str
    path: str
    size: int
    batch_id: str


@dataclass(frozen=True)
class Batch:
    batch_id: str
    seq: int
    created_at: str


class StateDB:
    """A thin, typed wrapper over the SQLite state database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{path}: cannot open the state database ({exc}); if the file is damaged, "
                "move it aside and run again (raw files are re-ingested by content hash)"
            ) from None
        self.path = path

    def _migrate(self) -> None:
        """Columns added after a database was created (CREATE TABLE IF NOT EXISTS keeps it)."""
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(promotions)")}
        if "applied" not in columns:
            self._conn.execute(
                "ALTER TABLE promotions ADD COLUMN applied INTEGER NOT NULL DEFAULT 1"
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- ingest ledger -------------------------------------------------------------------

    def known_sighting(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self._conn.execute(
            "SELECT sha256 FROM sightings WHERE path=? AND size=? AND mtime_ns=?",
            (path, size, mtime_ns),
        ).fetchone()
        return None if row is None else str(row[0])

    def record_sighting(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO sightings VALUES (?,?,?,?,?)",
            (path, size, mtime_ns, sha256, utcnow().isoformat()),
        )

    def ingested_sightings(self) -> set[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every file seen with the content the ledger took under
        that very path: such a file, unchanged, needs no second look."""
        rows = self._conn.execute(
            "SELECT s.path, s.size, s.mtime_ns FROM sightings s "
            "JOIN raw_files r ON r.sha256 = s.sha256 AND r.path = s.path"
        )
        return {(str(r[0]), int(r[1]), int(r[2])) for r in rows}

    def raw_file(self, sha256: str) -> RawFile | None:
        row = self._conn.execute(
            "SELECT sha256, source, path, size, batch_id FROM raw_files WHERE sha256=?", (sha256,)
        ).fetchone()
        return None if row is None else RawFile(*row)

    def create_batch(self, batch_id: str, files: list[RawFile]) -> Batch:
        """Record new files and the batch they form, in one transaction."""
        now = utcnow().isoformat()
        with self.transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()[0]
            conn.execute("INSERT INTO batches VALUES (?,?,?)", (batch_id, seq, now))
            conn.executemany(
                "INSERT INTO raw_files VALUES (?,?,?,?,?,?)",
                [(f.sha256, f.source, f.path, f.size, batch_id, now) for f in files],
            )
            self._append_event(
                conn,
                "DataArrived",
                {
                    "batch_id": batch_id,
                    "files": [{"path": f.path, "sha256": f.sha256} for f in files],
                },
            )
        return Batch(batch_id, int(seq), now)

    def batches(self) -> list[Batch]:
        rows = self._conn.execute("SELECT batch_id, seq, created_at FROM batches ORDER BY seq")
        return [Batch(*r) for r in rows]

    def batch(self, batch_id: str) -> Batch:
        """One batch by id; an unknown id is an error naming it."""
        row = self._conn.execute(
            "SELECT batch_id, seq, created_at FROM batches WHERE batch_id=?", (batch_id,)
        ).fetchone()
        if row is None:
            raise StateError(
                f"there is no batch {batch_id!r} in {self.path}; 'driftloop status' lists them"
            )
        return Batch(*row)

    def batch_files(self, batch_id: str) -> list[RawFile]:
        rows = self._conn.execute(
            "SELECT sha256, source, path, size, batch_id FROM raw_files WHERE batch_id=? "
            "ORDER BY source, path",
            (batch_id,),
        )
        return [RawFile(*r) for r in rows]

    def files_by_batch(self) -> dict[str, list[RawFile]]:
        """Every ledger file by batch (as :meth:`batch_files` orders them), in one query."""
        found: dict[str, list[RawFile]] = {}
        rows = self._conn.execute(
            "SELECT sha256, source, path, size, batch_id FROM raw_files ORDER BY source, path"
        )
        for row in rows:
            found.setdefault(row[4], []).append(RawFile(*row))
        return found

    def files_until(self, seq: int) -> list[RawFile]:
        """Every file ingested in batches up to ``seq``, oldest first."""
        rows = self._conn.execute(
            "SELECT f.sha256, f.source, f.path, f.size, f.batch_id FROM raw_files f "
            "JOIN batches b USING (batch_id) WHERE b.seq<=? ORDER BY b.seq, f.path",
            (seq,),
        )
        return [RawFile(*r) for r in rows]

    # -- stage runs ----------------------------------------------------------------------

    def progress_marker(self) -> str:
        """A short text that changes whenever a batch is formed, a stage run starts or ends, or
        a decision is recorded or applied: part of the settled fingerprint."""
        rows = [
            self._conn.execute("SELECT COUNT(*), MAX(seq) FROM batches").fetchone(),
            self._conn.execute(
                "SELECT COUNT(*), SUM(attempts), MAX(started_at), MAX(finished_at) FROM stage_runs"
            ).fetchone(),
            self._conn.execute("SELECT COUNT(*), MAX(id), SUM(applied) FROM promotions").fetchone(),
        ]
        return repr(rows)

    def succeeded(self, key: str) -> bool:
        row = self._conn.execute("SELECT status FROM stage_runs WHERE key=?", (key,)).fetchone()
        return row is not None and row[0] == "succeeded"

    def run_status(self, key: str) -> tuple[str | None, str | None]:
        """(status, error) of a stage run key, or (None, None) if it never ran."""
        row = self._conn.execute(
            "SELECT status, error FROM stage_runs WHERE key=?", (key,)
        ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def run_info(self, key: str) -> dict[str, Any] | None:
        """status, error, attempts, finished_at of a stage run key, or None if it never ran."""
        cur = self._conn.execute(
            "SELECT status, error, attempts, finished_at FROM stage_runs WHERE key=?", (key,)
        )
        row = cur.fetchone()
        return (
            None
            if row is None
            else dict(zip(("status", "error", "attempts", "finished_at"), row, strict=True))
        )

    def current_keys(self) -> dict[tuple[str, str], str]:
        """(stage, batch_id) -> the key of the last run started for that output, when it
        succeeded: the output it published is that key's, unless removed since (a pass
        checks ``_SUCCESS``), so a cache hit needs no manifest read."""
        rows = self._conn.execute(
            "SELECT c.stage, c.batch_id, c.key FROM current_runs c "
            "JOIN stage_runs s ON s.key = c.key AND s.status = 'succeeded'"
        )
        return {(r[0], r[1]): r[2] for r in rows}

    def adopt_current(self, stage: str, batch_id: str, key: str) -> None:
        """Record ``key`` as the one whose output is published (its manifest says so)."""
        self._conn.execute(
            "INSERT OR REPLACE INTO current_runs VALUES (?,?,?)", (stage, batch_id, key)
        )

    def fact(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM facts WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def facts_with_prefix(self, prefix: str) -> dict[str, str]:
        rows = self._conn.execute(
            "SELECT name, value FROM facts WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def record_fact(self, name: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO facts VALUES (?,?)", (name, value))

    def start_run(self, key: str, stage: str, batch_id: str) -> None:
        now = utcnow().isoformat()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO current_runs VALUES (?,?,?)", (stage, batch_id, key)
            )
            conn.execute(
                "INSERT INTO stage_runs (key, stage, batch_id, status, started_at) "
                "VALUES (?,?,?,'running',?) ON CONFLICT(key) DO UPDATE SET "
                "status='running', attempts=attempts+1, started_at=excluded.started_at, "
                "finished_at=NULL, error=NULL",
                (key, stage, batch_id, now),
            )
            self._append_event(
                conn, "StageStarted", {"stage": stage, "batch_id": batch_id, "key": key}
            )

    def finish_run(
        self,
        key: str,
        stage: str,
        batch_id: str,
        seconds: float,
        output: str | None,
        error: str | None,
        *,
        retry: bool = False,
    ) -> None:
        """Record the end of a run; a failure with ``retry`` is tried again next pass."""
        status = ("error" if retry else "failed") if error else "succeeded"
        with self.transaction() as conn:
            conn.execute(
                "UPDATE stage_runs SET status=?, finished_at=?, seconds=?, output=?, error=? "
                "WHERE key=?",
                (status, utcnow().isoformat(), seconds, output, error, key),
            )
            event = "StageFailed" if error else "StageSucceeded"
            payload = {"stage": stage, "batch_id": batch_id, "key": key, "output": output}
            if error:
                payload["error"] = error
            self._append_event(conn, event, payload)

    def last_succeeded(self, stage: str) -> dict[str, Any] | None:
        """The newest succeeded run of a stage (key, batch_id, finished_at, output)."""
        row = self._conn.execute(
            "SELECT key, batch_id, finished_at, output FROM stage_runs WHERE stage=? AND "
            "status='succeeded' ORDER BY finished_at DESC LIMIT 1",
            (stage,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("key", "batch_id", "finished_at", "output"), row, strict=True))

    def stage_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        cur = self._conn.execute(
            "SELECT key, stage, batch_id, status, attempts, started_at, finished_at, seconds, "
            "output, error FROM stage_runs ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    # -- promotions ----------------------------------------------------------------------

    def record_decision(self, decision: dict[str, Any], *, applied: bool = True) -> int:
        """Record a promotion decision (promoted, rejected, manual, rollback) and its event.

        A decision that moves the champion alias is recorded before the alias moves, with
        ``applied`` false, and marked applied after (:meth:`mark_applied`): if the process
        dies in between, :meth:`unapplied` tells what the registry still has to be told.
        """
        row = {"ts": utcnow().isoformat(), **decision, "applied": int(applied)}
        columns = list(row)
        with self.transaction() as conn:
            cur = conn.execute(
                f"INSERT INTO promotions ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                [row[c] for c in columns],
            )
            event = "ModelPromoted" if decision["decision"] != "rejected" else "PromotionRejected"
            self._append_event(conn, event, decision)
        return int(cur.lastrowid or 0)

    # applied: 0 recorded, the registry not told yet; 1 applied (the alias moved);
    # 2 superseded (a newer decision was applied instead); -1 withdrawn (the registry refused)
    def mark_applied(self, decision_id: int) -> None:
        """The alias moved as the decision says: ``ChampionMoved`` (what servers follow)."""
        with self.transaction() as conn:
            conn.execute("UPDATE promotions SET applied=1 WHERE id=?", (decision_id,))
            row = conn.execute(
                "SELECT model, version, decision FROM promotions WHERE id=?", (decision_id,)
            ).fetchone()
            if row is not None:
                self._append_event(
                    conn, "ChampionMoved", {"model": row[0], "version": row[1], "decision": row[2]}
                )

    def mark_superseded(self, decision_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE promotions SET applied=2 WHERE id=?", (decision_id,))

    def withdraw(self, decision_id: int, why: str) -> None:
        """A recorded decision the registry refused: it never took effect."""
        with self.transaction() as conn:
            conn.execute("UPDATE promotions SET applied=-1 WHERE id=?", (decision_id,))
            self._append_event(
                conn, "PromotionWithdrawn", {"decision_id": decision_id, "reason": why}
            )

    def unapplied(self, model: str) -> list[dict[str, Any]]:
        """Decisions recorded but not yet applied to the registry, oldest first."""
        cur = self._conn.execute(
            "SELECT * FROM promotions WHERE model=? AND applied=0 ORDER BY id", (model,)
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def decisions(self, model: str, *, effective: bool = False) -> list[dict[str, Any]]:
        """Every decision, oldest first; ``effective``: only those that took effect or are
        about to (recorded or applied; not superseded or withdrawn)."""
        sql = "SELECT * FROM promotions WHERE model=?"
        if effective:
            sql += " AND applied IN (0, 1)"
        cur = self._conn.execute(sql + " ORDER BY id", (model,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def applied_champion(self, model: str) -> str | None:
        """The version the last applied decision made champion (the registry has it)."""
        row = self._conn.execute(
            "SELECT version FROM promotions WHERE model=? AND decision != 'rejected' "
            "AND applied=1 ORDER BY id DESC LIMIT 1",
            (model,),
        ).fetchone()
        return str(row[0]) if row else None

    def decision_for(self, model: str, version: str) -> dict[str, Any] | None:
        """The latest decision that made ``version`` champion: ts, decision, reason, actor."""
        row = self._conn.execute(
            "SELECT ts, decision, reason, actor FROM promotions WHERE model=? AND version=? "
            "AND decision != 'rejected' AND applied IN (0, 1) ORDER BY id DESC LIMIT 1",
            (model, version),
        ).fetchone()
        return dict(zip(("ts", "decision", "reason", "actor"), row, strict=True)) if row else None

    def record(self, event: Event) -> None:
        """The state database as an event sink (:func:`driftloop.core.events.emit`)."""
        self.record_event(event.type, event.payload())

    def record_event(self, type_: str, payload: dict[str, Any]) -> None:
        with self.transaction() as conn:
            self._append_event(conn, type_, payload)

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def _append_event(conn: sqlite3.Connection, type_: str, payload: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO events (ts, type, payload) VALUES (?,?,?)",
            (utcnow().isoformat(), type_, json.dumps(payload, sort_keys=True, default=str)),
        )

    def events_after(self, event_id: int, types: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Events with an id above ``event_id`` (of the given types), oldest first."""
        sql = "SELECT id, ts, type, payload FROM events WHERE id > ?"
        args: list[Any] = [event_id]
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args += list(types)
        rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        return [{"id": r[0], "ts": r[1], "type": r[2], **json.loads(r[3])} for r in rows]

    def last_event(self, type_: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT id, ts, type, payload FROM events WHERE type=? ORDER BY id DESC LIMIT 1",
            (type_,),
        ).fetchone()
        return (
            None
            if row is None
            else {"id": row[0], "ts": row[1], "type": row[2], **json.loads(row[3])}
        )

    def last_event_id(self, types: tuple[str, ...] = ()) -> int:
        sql = "SELECT MAX(id) FROM events"
        if types:
            sql += f" WHERE type IN ({','.join('?' * len(types))})"
        row = self._conn.execute(sql, types).fetchone()
        return int(row[0] or 0)

    # -- leases --------------------------------------------------------------------------

    def take_lease(
        self,
        name: str,
        holder: str,
        pid: int,
        host: str,
        *,
        seconds: float,
        now: float,
        replace: str | None = None,
    ) -> dict[str, Any] | None:
        """Take or renew the lease ``name`` for ``holder``; None when taken, else who has it.

        A lease whose holder stopped renewing it (a process that died) expires after
        ``seconds`` and can then be taken by anyone.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT holder, pid, host, acquired_at, expires_at FROM leases WHERE name=?",
                (name,),
            ).fetchone()
            # ``replace``: take it from that holder (known dead) even before it expires, and
            # only from it: a live process that took it meanwhile keeps it
            if row is not None and row[0] != holder and row[4] > now and row[0] != replace:
                return dict(
                    zip(("holder", "pid", "host", "acquired_at", "expires_at"), row, strict=True)
                )
            acquired = row[3] if row is not None and row[0] == holder else utcnow().isoformat()
            conn.execute(
                "INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?,?)",
                (name, holder, pid, host, acquired, now + seconds),
            )
        return None

    def drop_lease(self, name: str, holder: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))

    def lease(self, name: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT holder, pid, host, acquired_at, expires_at FROM leases WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("holder", "pid", "host", "acquired_at", "expires_at"), row, strict=True))

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, ts, type, payload FROM events ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [{"id": r[0], "ts": r[1], "type": r[2], **json.loads(r[3])} for r in reversed(rows)]
