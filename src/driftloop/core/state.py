"""The project's state database: ``.driftloop/state.db`` (SQLite, WAL) or PostgreSQL.

It holds the ingest ledger (each raw file by content hash, taken exactly once), the
batches those files formed, the stage runs keyed for idempotence, promotion decisions,
an append-only event log, the project's writer lease and per-unit claims for many
workers. Every write is one short transaction. Tables, URL and engine:
:mod:`driftloop.core.state_store`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL

from driftloop.core.errors import StateError
from driftloop.core.redact import redact, redact_value
from driftloop.core.state_peek import PROGRESS, SCHEMA_VERSION, progress_marker
from driftloop.core.state_store import (
    WRITE_LOCK,
    batches,
    claims,
    current_runs,
    ensure_schema,
    events,
    facts,
    file_engine,
    leases,
    promotions,
    raw_files,
    reason,
    resolve_url,
    shared_engine,
    shown,
    sightings,
    stage_runs,
)

if TYPE_CHECKING:
    from driftloop.core.events import Event


def utcnow() -> datetime:
    return datetime.now(UTC)


class RawFile(NamedTuple):
    sha256: str
    source: str
    path: str
    size: int
    batch_id: str


class Batch(NamedTuple):
    batch_id: str
    seq: int
    created_at: str


@dataclass(frozen=True)
class Claim:
    """Who holds a unit of work (``prep:<batch>``, ``train``...) and until when."""

    unit: str
    holder: str
    acquired_at: str
    expires_at: float


def state_exists(path: Path, url: str | None = None) -> bool:
    """Whether there is a state database to read (a server's is made when first opened;
    the embedded file only by a writer: a reader, such as a server, never creates it)."""
    resolved = resolve_url(path, url)
    if resolved.get_backend_name() != "sqlite":
        return True
    return Path(resolved.database or path).is_file()


def state_where(path: Path, url: str | None = None) -> str:
    """The state database for a message: the embedded file, or the URL without password."""
    resolved = resolve_url(path, url)
    if resolved.get_backend_name() == "sqlite":
        return str(resolved.database)
    return shown(resolved)


_FILE = (raw_files.c.sha256, raw_files.c.source, raw_files.c.path, raw_files.c.size)
_LEASE = ("holder", "pid", "host", "acquired_at", "expires_at")
# built once: ingest asks these for every file of every pass
_SIGHTING = sa.select(sightings.c.sha256).where(
    sightings.c.path == sa.bindparam("path"),
    sightings.c.size == sa.bindparam("size"),
    sightings.c.mtime_ns == sa.bindparam("mtime_ns"),
)
_RAW_FILE = sa.select(*_FILE, raw_files.c.batch_id).where(
    raw_files.c.sha256 == sa.bindparam("sha256")
)
_RAW_FILE_AT = (
    sa.select(*_FILE, raw_files.c.batch_id)
    .where(raw_files.c.path == sa.bindparam("path"))
    .order_by(raw_files.c.ingested_at.desc())
    .limit(1)
)


_BATCHES = sa.select(batches.c.batch_id, batches.c.seq, batches.c.created_at).order_by(
    batches.c.seq
)
_CURRENT = sa.select(current_runs.c.stage, current_runs.c.batch_id, current_runs.c.key).join(
    stage_runs,
    sa.and_(stage_runs.c.key == current_runs.c.key, stage_runs.c.status == "succeeded"),
)
_CURRENT_OF: dict[str, sa.Select[Any]] = {}
_CURRENT_ONE = (
    sa.select(current_runs.c.key)
    .join(
        stage_runs,
        sa.and_(stage_runs.c.key == current_runs.c.key, stage_runs.c.status == "succeeded"),
    )
    .where(
        current_runs.c.stage == sa.bindparam("stage"),
        current_runs.c.batch_id == sa.bindparam("batch_id"),
    )
)
_INGESTED = sa.select(sightings.c.path, sightings.c.size, sightings.c.mtime_ns).join(
    raw_files,
    sa.and_(raw_files.c.sha256 == sightings.c.sha256, raw_files.c.path == sightings.c.path),
)
_FILES = sa.select(*_FILE, raw_files.c.batch_id).order_by(raw_files.c.source, raw_files.c.path)


def _upserts(dialect: Any) -> dict[str, Any]:
    """The dialect's ON CONFLICT statements, built once (building one cost more than
    running it): a sighting recorded once, and a claim (see :meth:`StateDB.claim`)."""
    sighting = dialect.insert(sightings).values(
        {c.name: sa.bindparam(f"p_{c.name}") for c in sightings.columns}
    )
    ins = dialect.insert(claims).values({c.name: sa.bindparam(f"p_{c.name}") for c in claims.c})
    c = claims.c
    claim = ins.on_conflict_do_update(
        index_elements=[c.unit],
        set_={
            "holder": ins.excluded.holder,
            "acquired_at": sa.case(
                (c.holder == ins.excluded.holder, c.acquired_at), else_=ins.excluded.acquired_at
            ),
            "expires_at": ins.excluded.expires_at,
        },
        # taken over when expired, extended by its own holder, else left alone
        where=sa.or_(c.expires_at <= sa.bindparam("p_now"), c.holder == ins.excluded.holder),
    )
    return {
        "sighting": sighting.on_conflict_do_nothing(),
        "claim": claim.returning(c.unit),
    }


_UPSERTS = {"sqlite": _upserts(sqlite), "postgresql": _upserts(postgresql)}


def _as_dict(row: Any) -> dict[str, Any]:
    # plain str keys: SQLAlchemy's are a str subclass (quoted_name), which orjson refuses
    return {str(k): v for k, v in row._mapping.items()}


_SCHEMA_READY: set[str] = set()  # server URLs whose schema this process has checked


_COMPILED: dict[tuple[int, str], str] = {}  # StateDB._all: module-level statements only


def _fetch(conn: sa.Connection, sql: str) -> list[tuple[Any, ...]]:
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


class StateDB:
    """A thin, typed wrapper over the state database.

    ``StateDB(layout.state_db)`` opens the project's SQLite file, or the server that
    ``DRIFTLOOP_STATE_URL`` names; ``url`` (the spec's ``state.url``) wins over both.
    """

    def __init__(self, path: Path, *, url: str | URL | None = None) -> None:
        self.url = url if isinstance(url, URL) else resolve_url(path, url)
        self.path = path
        self._sqlite = self.url.get_backend_name() == "sqlite"
        where = str(self.url.database) if self._sqlite else shown(self.url)
        self.where = where  # for messages: the file, or the URL without its password
        if self._sqlite and self.url.database:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        # one engine per file or server in the process (state_store: file_engine, shared_engine)
        self._engine = file_engine(self.url) if self._sqlite else shared_engine(self.url)
        self._upsert = _UPSERTS[self.url.get_backend_name()]
        # SQLite: the opening thread keeps a connection for its reads and one for its writes
        # (other threads open their own per call): opening one per call was most of a call's
        # cost, and ingest reads twice for every file of every pass
        self._owner = threading.get_ident()
        self._kept: sa.Connection | None = None
        self._kept_writer: sa.Connection | None = None
        try:
            self._ensure_schema()
        except sa.exc.SQLAlchemyError as exc:
            if self._sqlite:
                self.close()
                raise StateError(
                    f"{where}: cannot open the state database ({reason(exc, self.url)}); "
                    "check the file's permissions and its disk; a damaged file is repaired "
                    "with 'sqlite3 state.db .recover' into a new file, or restored from a "
                    "backup. Do not delete it or move it aside: it records which raw files "
                    "were taken, and without it every raw file would be ingested again"
                ) from None
            raise StateError(
                f"{where}: cannot use the state database ({reason(exc, self.url)}); check "
                "that the server runs and state.url / DRIFTLOOP_STATE_URL"
            ) from None

    def _ensure_schema(self) -> None:
        """Create or migrate the schema unless it is known current: SQLite's ``user_version``
        says so (one cheap read on every open), a server's was checked by this process."""
        if self._sqlite:
            if self._one(sa.text("PRAGMA user_version"))[0] >= SCHEMA_VERSION:
                return
        elif self.url.render_as_string(hide_password=False) in _SCHEMA_READY:
            return
        with self.transaction() as conn:  # serialized: two workers may start at once
            ensure_schema(conn)
            if self._sqlite:
                conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if not self._sqlite:
            _SCHEMA_READY.add(self.url.render_as_string(hide_password=False))

    def close(self) -> None:
        for conn in (self._kept, self._kept_writer):
            if conn is not None:
                conn.close()
        self._kept = self._kept_writer = None

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateDB({self.where!r})"

    @contextmanager
    def transaction(self, *, serial: bool = True) -> Iterator[sa.Connection]:
        """One write transaction; ``serial``: one writer at a time (state_store's docstring)."""
        if self._sqlite and threading.get_ident() == self._owner:
            if self._kept_writer is None:
                self._kept_writer = self._engine.connect()
                self._kept_writer.execution_options(driftloop_write=True)
            with self._kept_writer.begin():
                yield self._kept_writer
            return
        with self._engine.connect() as conn:
            conn.execution_options(driftloop_write=True)
            with conn.begin():
                if serial and not self._sqlite:
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(WRITE_LOCK)))
                yield conn

    def _rows(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> Sequence[Any]:
        """A read: one statement, its rows (tuples with ``._mapping``)."""
        if not self._sqlite or threading.get_ident() != self._owner:
            with self._engine.connect() as pooled:
                return pooled.execute(stmt, params).fetchall()
        if self._kept is None:
            self._kept = self._engine.connect()
        try:  # fetchall: one driver call, not one per row (a history has 10,000s of rows)
            return self._kept.execute(stmt, params).fetchall()
        finally:
            self._kept.rollback()  # no BEGIN was sent (state_store's begin hook): nothing to undo

    def _all(self, stmt: sa.Select[Any]) -> list[tuple[Any, ...]]:
        """A bulk read with constants only (a whole table's worth of rows): the statement
        compiled once, its rows fetched by the driver as plain tuples. Through SQLAlchemy's
        result rows, 10,000 rows cost a tenth of a second; a pass reads a few such tables."""
        dialect = self._engine.dialect
        sql = _COMPILED.get((id(stmt), dialect.name))
        if sql is None:
            compiled = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            sql = _COMPILED[(id(stmt), dialect.name)] = str(compiled)
        if not self._sqlite or threading.get_ident() != self._owner:
            with self._engine.connect() as pooled:
                return _fetch(pooled, sql)
        if self._kept is None:
            self._kept = self._engine.connect()
        try:
            return _fetch(self._kept, sql)
        finally:
            self._kept.rollback()

    def _one(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> Any:
        rows = self._rows(stmt, params)
        return rows[0] if rows else None

    def _insert(self, table: sa.Table) -> Any:  # the dialect's INSERT, which has ON CONFLICT
        return (sqlite.insert if self._sqlite else postgresql.insert)(table)

    # -- ingest ledger -------------------------------------------------------------------

    def known_sighting(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self._one(_SIGHTING, {"path": path, "size": size, "mtime_ns": mtime_ns})
        return None if row is None else str(row[0])

    def record_sighting(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        row = {"path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha256}
        row["seen_at"] = utcnow().isoformat()
        with self.transaction(serial=False) as conn:
            conn.execute(self._upsert["sighting"], {f"p_{k}": v for k, v in row.items()})

    def ingested_sightings(self) -> set[tuple[str, int, int]]:
        """(path, size, mtime_ns) of every file seen with the content the ledger took under
        that very path: such a file, unchanged, needs no second look."""
        return {(str(p), int(z), int(m)) for p, z, m in self._all(_INGESTED)}

    def raw_file(self, sha256: str) -> RawFile | None:
        row = self._one(_RAW_FILE, {"sha256": sha256})
        return None if row is None else RawFile(*row)

    def raw_file_at(self, path: str) -> RawFile | None:
        """The content the ledger took under ``path`` (the latest, where an older release
        took several), to tell a file changed in place from a new one."""
        row = self._one(_RAW_FILE_AT, {"path": path})
        return None if row is None else RawFile(*row)

    def create_batch(self, batch_id: str, files: list[RawFile]) -> Batch:
        """Record new files and the batch they form, in one transaction."""
        now = utcnow().isoformat()
        try:
            with self.transaction() as conn:
                # MAX + 1 is safe with many writers: the transaction is serialized (SQLite's
                # write lock, PostgreSQL's advisory lock), and ``seq`` is UNIQUE besides.
                # A rolled-back batch leaves no gap; readers only rely on the order.
                top = sa.select(sa.func.coalesce(sa.func.max(batches.c.seq), 0) + 1)
                seq = int(conn.execute(top).scalar_one())
                conn.execute(batches.insert().values(batch_id=batch_id, seq=seq, created_at=now))
                rows = [
                    {"sha256": f.sha256, "source": f.source, "path": f.path, "size": f.size}
                    for f in files
                ]
                if rows:
                    conn.execute(
                        raw_files.insert().values(batch_id=batch_id, ingested_at=now), rows
                    )
                self._append_event(
                    conn,
                    "DataArrived",
                    {
                        "batch_id": batch_id,
                        "files": [{"path": f.path, "sha256": f.sha256} for f in files],
                    },
                )
        except sa.exc.IntegrityError as exc:
            raise StateError(
                f"{self.where}: batch {batch_id} conflicts with what another process recorded "
                f"meanwhile ({reason(exc, self.url)}); ingest again: the ledger has the files"
            ) from None
        return Batch(batch_id, seq, now)

    def batches(self) -> list[Batch]:
        return [Batch(*r) for r in self._all(_BATCHES)]

    def batch(self, batch_id: str) -> Batch:
        """One batch by id; an unknown id is an error naming it."""
        c = batches.c
        row = self._one(sa.select(c.batch_id, c.seq, c.created_at).where(c.batch_id == batch_id))
        if row is None:
            raise StateError(
                f"there is no batch {batch_id!r} in {self.where}; 'driftloop status' lists them"
            )
        return Batch(*row)

    def batch_files(self, batch_id: str) -> list[RawFile]:
        c = raw_files.c
        stmt = (
            sa.select(*_FILE, c.batch_id).where(c.batch_id == batch_id).order_by(c.source, c.path)
        )
        return [RawFile(*r) for r in self._rows(stmt)]

    def files_by_batch(self) -> dict[str, list[RawFile]]:
        """Every ledger file by batch (as :meth:`batch_files` orders them), in one query."""
        found: dict[str, list[RawFile]] = {}
        for row in self._all(_FILES):
            found.setdefault(row[4], []).append(RawFile(*row))
        return found

    def files_until(self, seq: int) -> list[RawFile]:
        """Every file ingested in batches up to ``seq``, oldest first."""
        stmt = (
            sa.select(*_FILE, raw_files.c.batch_id)
            .join(batches, batches.c.batch_id == raw_files.c.batch_id)
            .where(batches.c.seq <= seq)
            .order_by(batches.c.seq, raw_files.c.path)
        )
        return [RawFile(*r) for r in self._rows(stmt)]

    # -- stage runs ----------------------------------------------------------------------

    def progress_marker(self) -> str:
        """A short text that changes whenever a batch is formed, a stage run starts or ends, or
        a decision is recorded or applied: part of the settled fingerprint. The statements
        are :data:`driftloop.core.state_peek.PROGRESS`, which a settled pass also reads
        without SQLAlchemy."""
        return progress_marker([tuple(self._one(sa.text(q))) for q in PROGRESS])

    def succeeded(self, key: str) -> bool:
        return self.run_status(key)[0] == "succeeded"

    def run_status(self, key: str) -> tuple[str | None, str | None]:
        """(status, error) of a stage run key, or (None, None) if it never ran."""
        c = stage_runs.c
        row = self._one(sa.select(c.status, c.error).where(c.key == key))
        return (None, None) if row is None else (row[0], row[1])

    def run_info(self, key: str) -> dict[str, Any] | None:
        """status, error, attempts, finished_at of a stage run key, or None if it never ran."""
        c = stage_runs.c
        row = self._one(sa.select(c.status, c.error, c.attempts, c.finished_at).where(c.key == key))
        return None if row is None else _as_dict(row)

    def current_keys(self) -> dict[tuple[str, str], str]:
        """(stage, batch_id) -> the key of the last run started for that output, when it
        succeeded: the output it published is that key's, unless removed since (a pass
        checks ``_SUCCESS``), so a cache hit needs no manifest read."""
        return {(r[0], r[1]): r[2] for r in self._all(_CURRENT)}

    def current_keys_of(self, stage: str) -> dict[str, str]:
        """:meth:`current_keys` for one stage's outputs: batch_id -> key."""
        if stage not in _CURRENT_OF:  # one statement per stage: compiled once (see _all)
            _CURRENT_OF[stage] = _CURRENT.where(current_runs.c.stage == stage)
        return {r[1]: r[2] for r in self._all(_CURRENT_OF[stage])}

    def current_key(self, stage: str, batch_id: str) -> str | None:
        """:meth:`current_keys` for one output (its primary key: one indexed row)."""
        row = self._one(_CURRENT_ONE, {"stage": stage, "batch_id": batch_id})
        return None if row is None else str(row[0])

    def _current(self, stage: str, batch_id: str, key: str) -> Any:
        ins = self._insert(current_runs).values(stage=stage, batch_id=batch_id, key=key)
        return ins.on_conflict_do_update(
            index_elements=[current_runs.c.stage, current_runs.c.batch_id],
            set_={"key": ins.excluded.key},
        )

    def adopt_current(self, stage: str, batch_id: str, key: str) -> None:
        """Record ``key`` as the one whose output is published (its manifest says so)."""
        with self.transaction(serial=False) as conn:
            conn.execute(self._current(stage, batch_id, key))

    def fact(self, name: str) -> str | None:
        row = self._one(sa.select(facts.c.value).where(facts.c.name == name))
        return None if row is None else str(row[0])

    def facts_with_prefix(self, prefix: str) -> dict[str, str]:
        c = facts.c
        stmt = sa.select(c.name, c.value).where(c.name.startswith(prefix, autoescape=True))
        return {str(r[0]): str(r[1]) for r in self._rows(stmt)}

    def record_fact(self, name: str, value: str) -> None:
        ins = self._insert(facts).values(name=name, value=value)
        stmt = ins.on_conflict_do_update(
            index_elements=[facts.c.name], set_={"value": ins.excluded.value}
        )
        with self.transaction(serial=False) as conn:
            conn.execute(stmt)

    def start_run(self, key: str, stage: str, batch_id: str) -> None:
        now = utcnow().isoformat()
        ins = self._insert(stage_runs).values(
            key=key, stage=stage, batch_id=batch_id, status="running", started_at=now
        )
        stmt = ins.on_conflict_do_update(
            index_elements=[stage_runs.c.key],
            set_={
                "status": "running",
                "attempts": stage_runs.c.attempts + 1,
                "started_at": ins.excluded.started_at,
                "finished_at": None,
                "error": None,
            },
        )
        with self.transaction() as conn:
            conn.execute(self._current(stage, batch_id, key))
            conn.execute(stmt)
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
        error = redact(error) if error else error  # an error may quote a URI's password
        with self.transaction() as conn:
            conn.execute(
                stage_runs.update()
                .where(stage_runs.c.key == key)
                .values(
                    status=status,
                    finished_at=utcnow().isoformat(),
                    seconds=seconds,
                    output=output,
                    error=error,
                )
            )
            event = "StageFailed" if error else "StageSucceeded"
            payload = {"stage": stage, "batch_id": batch_id, "key": key, "output": output}
            if error:
                payload["error"] = error
            self._append_event(conn, event, payload)

    UNRESOLVED = ("failed", "error")  # a run that failed and is neither fixed nor dismissed

    def failures(self, *, dismissed: bool = True) -> list[dict[str, Any]]:
        """The failed runs still in the way: for each (stage, batch) output, its current key
        when that key failed (on its data, or retries exhausted or pending) and, with
        ``dismissed``, when a user dismissed it; oldest batch first. A failure whose output
        a newer key has since made is not listed."""
        c, s = current_runs.c, stage_runs.c
        statuses = (*self.UNRESOLVED, "dismissed") if dismissed else self.UNRESOLVED
        published = sa.exists().where(  # by its primary key: the runs by status lead
            c.stage == s.stage, c.batch_id == s.batch_id, c.key == s.key
        )
        stmt = (
            sa.select(s.stage, s.batch_id, s.key, s.status, s.error, s.attempts, s.finished_at)
            .where(s.status.in_(statuses), published)
            .order_by(s.batch_id, s.stage)
        )
        return [_as_dict(r) for r in self._rows(stmt)]

    def dismissed_keys(self) -> dict[tuple[str, str], str]:
        """(stage, batch_id) -> the current key a user dismissed."""
        return {
            (f["stage"], f["batch_id"]): f["key"]
            for f in self.failures()
            if f["status"] == "dismissed"
        }

    def dismiss(self, key: str, *, reason: str, actor: str) -> dict[str, Any]:
        """Mark a failed run dismissed (``FailureDismissed``, with who and why, in the same
        transaction); returns the event's payload."""
        from driftloop.core.events import FailureDismissed

        return self._resolve(
            key, "dismissed", lambda run: FailureDismissed(reason=reason, actor=actor, **run)
        )

    def request_retry(self, key: str, *, actor: str) -> dict[str, Any]:
        """Make a failed or dismissed run run again on the next pass, with a fresh count of
        attempts (``RetryRequested``); returns the event's payload."""
        from driftloop.core.events import RetryRequested

        def event(run: dict[str, Any]) -> Any:
            return RetryRequested(actor=actor, **{k: run[k] for k in ("stage", "batch_id", "key")})

        return self._resolve(key, "retry", event)

    def _resolve(self, key: str, status: str, event: Any) -> dict[str, Any]:
        s = stage_runs.c
        with self.transaction() as conn:
            row = conn.execute(
                sa.select(s.stage, s.batch_id, s.key, s.error, s.status).where(s.key == key)
            ).first()
            if row is None or row[4] not in (*self.UNRESOLVED, "dismissed"):
                raise StateError(
                    f"stage run {key[:12]}: not a failed run (status {row[4] if row else 'none'})"
                    "; 'driftloop batches' lists the failures"
                )
            found = event({"stage": row[0], "batch_id": row[1], "key": row[2], "error": row[3]})
            # finished_at moves too: the pass's settled fingerprint sees the change
            values: dict[str, Any] = {"status": status, "finished_at": utcnow().isoformat()}
            if status == "retry":
                values["attempts"] = 0
            conn.execute(stage_runs.update().where(s.key == key).values(**values))
            payload: dict[str, Any] = found.payload()
            self._append_event(conn, found.type, payload)
        return payload

    def last_succeeded(self, stage: str) -> dict[str, Any] | None:
        """The newest succeeded run of a stage (key, batch_id, finished_at, output)."""
        c = stage_runs.c
        row = self._one(
            sa.select(c.key, c.batch_id, c.finished_at, c.output)
            .where(c.stage == stage, c.status == "succeeded")
            .order_by(c.finished_at.desc())
            .limit(1)
        )
        return None if row is None else _as_dict(row)

    def running(self) -> list[dict[str, Any]]:
        """The stage runs recorded as running (a live run, or one whose process was killed)."""
        stmt = sa.select(stage_runs).where(stage_runs.c.status == "running")
        return [_as_dict(r) for r in self._rows(stmt.order_by(stage_runs.c.started_at))]

    def stage_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        stmt = sa.select(stage_runs).order_by(stage_runs.c.started_at.desc()).limit(limit)
        return [_as_dict(r) for r in self._rows(stmt)]

    # -- promotions ----------------------------------------------------------------------

    def record_decision(self, decision: dict[str, Any], *, applied: bool = True) -> int:
        """Record a promotion decision (promoted, rejected, manual, rollback) and its event.

        A decision that moves the champion alias is recorded before the alias moves, with
        ``applied`` false, and marked applied after (:meth:`mark_applied`): if the process
        dies in between, :meth:`unapplied` tells what the registry still has to be told.
        """
        decision = redact_value(decision)
        row = {"ts": utcnow().isoformat(), **decision, "applied": int(applied)}
        with self.transaction() as conn:
            result = conn.execute(promotions.insert().values(**row))
            event = "ModelPromoted" if decision["decision"] != "rejected" else "PromotionRejected"
            self._append_event(conn, event, decision)
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    # applied: 0 recorded, the registry not told yet; 1 applied (the alias moved);
    # 2 superseded (a newer decision was applied instead); -1 withdrawn (the registry refused)
    def mark_applied(self, decision_id: int) -> None:
        """The alias moved as the decision says: ``ChampionMoved`` (what servers follow)."""
        p = promotions.c
        with self.transaction() as conn:
            conn.execute(promotions.update().where(p.id == decision_id).values(applied=1))
            row = conn.execute(
                sa.select(p.model, p.version, p.decision).where(p.id == decision_id)
            ).first()
            if row is not None:
                self._append_event(
                    conn, "ChampionMoved", {"model": row[0], "version": row[1], "decision": row[2]}
                )

    def mark_superseded(self, decision_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                promotions.update().where(promotions.c.id == decision_id).values(applied=2)
            )

    def withdraw(self, decision_id: int, why: str) -> None:
        """A recorded decision the registry refused: it never took effect."""
        with self.transaction() as conn:
            conn.execute(
                promotions.update().where(promotions.c.id == decision_id).values(applied=-1)
            )
            self._append_event(
                conn, "PromotionWithdrawn", {"decision_id": decision_id, "reason": why}
            )

    def unapplied(self, model: str) -> list[dict[str, Any]]:
        """Decisions recorded but not yet applied to the registry, oldest first."""
        p = promotions.c
        stmt = sa.select(promotions).where(p.model == model, p.applied == 0).order_by(p.id)
        return [_as_dict(r) for r in self._rows(stmt)]

    def decisions(self, model: str, *, effective: bool = False) -> list[dict[str, Any]]:
        """Every decision, oldest first; ``effective``: only those that took effect or are
        about to (recorded or applied; not superseded or withdrawn)."""
        p = promotions.c
        stmt = sa.select(promotions).where(p.model == model)
        if effective:
            stmt = stmt.where(p.applied.in_((0, 1)))
        return [_as_dict(r) for r in self._rows(stmt.order_by(p.id))]

    def applied_champion(self, model: str) -> str | None:
        """The version the last applied decision made champion (the registry has it)."""
        p = promotions.c
        row = self._one(
            sa.select(p.version)
            .where(p.model == model, p.decision != "rejected", p.applied == 1)
            .order_by(p.id.desc())
            .limit(1)
        )
        return str(row[0]) if row else None

    def decision_for(self, model: str, version: str) -> dict[str, Any] | None:
        """The latest decision that made ``version`` champion: ts, decision, reason, actor."""
        p = promotions.c
        row = self._one(
            sa.select(p.ts, p.decision, p.reason, p.actor)
            .where(
                p.model == model,
                p.version == version,
                p.decision != "rejected",
                p.applied.in_((0, 1)),
            )
            .order_by(p.id.desc())
            .limit(1)
        )
        return _as_dict(row) if row else None

    def record(self, event: Event) -> None:
        """The state database as an event sink (:func:`driftloop.core.events.emit`)."""
        self.record_event(event.type, event.payload())

    def record_event(self, type_: str, payload: dict[str, Any]) -> None:
        with self.transaction() as conn:
            self._append_event(conn, type_, payload)

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def _append_event(conn: sa.Connection, type_: str, payload: dict[str, Any]) -> None:
        # in a serialized transaction only: ids then commit in the order they are allocated
        conn.execute(
            events.insert().values(
                ts=utcnow().isoformat(),
                type=type_,
                payload=redact(json.dumps(payload, sort_keys=True, default=str)),
            )
        )

    @staticmethod
    def _event(row: Any) -> dict[str, Any]:
        return {"id": row[0], "ts": row[1], "type": row[2], **json.loads(row[3])}

    def events_after(self, event_id: int, types: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Events with an id above ``event_id`` (of the given types), oldest first."""
        stmt = sa.select(events).where(events.c.id > event_id)
        if types:
            stmt = stmt.where(events.c.type.in_(types))
        return [self._event(r) for r in self._rows(stmt.order_by(events.c.id))]

    def last_event(self, type_: str) -> dict[str, Any] | None:
        stmt = sa.select(events).where(events.c.type == type_).order_by(events.c.id.desc())
        row = self._one(stmt.limit(1))
        return None if row is None else self._event(row)

    def last_event_id(self, types: tuple[str, ...] = ()) -> int:
        stmt = sa.select(sa.func.max(events.c.id))
        if types:
            stmt = stmt.where(events.c.type.in_(types))
        row = self._one(stmt)
        return int(row[0] or 0) if row else 0

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        stmt = sa.select(events).order_by(events.c.id.desc()).limit(limit)
        return [self._event(r) for r in reversed(self._rows(stmt))]

    def events_page(
        self,
        *,
        types: tuple[str, ...] = (),
        batch_id: str | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """A page of events, newest first: of the given types, naming ``batch_id`` in their
        payload, with ids below ``before`` or above ``after`` (the dashboard's event log)."""
        stmt = sa.select(events)
        if types:
            stmt = stmt.where(events.c.type.in_(types))
        if batch_id:
            # payloads are JSON written with sort_keys and the default separators
            stmt = stmt.where(events.c.payload.contains(json.dumps({"batch_id": batch_id})[1:-1]))
        if before is not None:
            stmt = stmt.where(events.c.id < before)
        if after is not None:
            stmt = stmt.where(events.c.id > after)
        stmt = stmt.order_by(events.c.id.desc()).limit(limit)
        return [self._event(r) for r in self._rows(stmt)]

    def event_types(self) -> list[str]:
        """Every event type the log holds, sorted."""
        stmt = sa.select(events.c.type).distinct().order_by(events.c.type)
        return [str(r[0]) for r in self._rows(stmt)]

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
        c = leases.c
        with self.transaction() as conn:  # serialized: the read and the write are one step
            row = conn.execute(
                sa.select(c.holder, c.pid, c.host, c.acquired_at, c.expires_at).where(
                    c.name == name
                )
            ).first()
            # ``replace``: take it from that holder (known dead) even before it expires, and
            # only from it: a live process that took it meanwhile keeps it
            if row is not None and row[0] != holder and row[4] > now and row[0] != replace:
                return dict(zip(_LEASE, row, strict=True))
            acquired = row[3] if row is not None and row[0] == holder else utcnow().isoformat()
            values = {"holder": holder, "pid": pid, "host": host, "acquired_at": acquired}
            values["expires_at"] = now + seconds
            ins = self._insert(leases).values(name=name, **values)
            conn.execute(ins.on_conflict_do_update(index_elements=[c.name], set_=values))
        return None

    def drop_lease(self, name: str, holder: str) -> None:
        with self.transaction() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def lease(self, name: str) -> dict[str, Any] | None:
        c = leases.c
        row = self._one(
            sa.select(c.holder, c.pid, c.host, c.acquired_at, c.expires_at).where(c.name == name)
        )
        return None if row is None else dict(zip(_LEASE, row, strict=True))

    # -- claims: one unit of work, one holder, many workers --------------------------------

    def claim(self, unit: str, holder: str, *, seconds: float, now: float) -> bool:
        """Take ``unit`` for ``holder`` until ``now + seconds``; False when another holds it.

        One atomic statement (INSERT ... ON CONFLICT DO UPDATE ... WHERE): the row is
        inserted, or taken over when its claim expired, or extended when ``holder`` has it
        already; otherwise nothing changes and no row counts. ``now`` is the caller's clock
        (``time.time()``): workers' clocks must agree to well within ``seconds``.
        """
        params: dict[str, Any] = {"p_unit": unit, "p_holder": holder, "p_now": now}
        params.update(p_acquired_at=utcnow().isoformat(), p_expires_at=now + seconds)
        with self.transaction(serial=False) as conn:
            return conn.execute(self._upsert["claim"], params).first() is not None

    def renew(self, unit: str, holder: str, *, seconds: float, now: float) -> bool:
        """Extend ``holder``'s claim to ``now + seconds``; False when it no longer has it.

        A claim that expired but that nobody took over is still renewed: its row naming
        ``holder`` proves that nobody else held the unit in between.
        """
        c = claims.c
        stmt = (
            claims.update()
            .where(c.unit == unit, c.holder == holder)
            .values(expires_at=now + seconds)
        )
        return self._changed(stmt)

    def release(self, unit: str, holder: str) -> bool:
        """Give ``unit`` up; only its holder can (False, and nothing changes, otherwise)."""
        return self._changed(
            claims.delete().where(claims.c.unit == unit, claims.c.holder == holder)
        )

    def _changed(self, stmt: Any) -> bool:
        """Run one claim statement; did it change the row? (RETURNING, not the row count:
        psycopg's cursor through SQLAlchemy gives -1 for an upsert's count.)"""
        with self.transaction(serial=False) as conn:
            return conn.execute(stmt.returning(claims.c.unit)).first() is not None

    def claimant(self, unit: str, *, now: float) -> Claim | None:
        """Who holds ``unit`` at ``now`` (None: free, or its claim expired)."""
        c = claims.c
        row = self._one(sa.select(claims).where(c.unit == unit, c.expires_at > now))
        return None if row is None else Claim(*row)

    def claims(self, *, now: float, prefix: str = "") -> list[Claim]:
        """The claims live at ``now`` (units starting with ``prefix``), by unit."""
        c = claims.c
        stmt = sa.select(claims).where(c.expires_at > now)
        if prefix:
            stmt = stmt.where(c.unit.startswith(prefix, autoescape=True))
        return [Claim(*r) for r in self._rows(stmt.order_by(c.unit))]


class CurrentKeys(MutableMapping[tuple[str, str], str]):
    """The published key of each output, (stage, batch_id) -> key (:meth:`StateDB.current_keys`),
    read as asked: one indexed row each for the first outputs of a stage asked about (a pass
    with a few new batches asks about those only), the stage's whole table at once from the
    ``MANY``-th on (a pass that keys the whole history: a training's lineage). The runner
    writes what it changes through to it."""

    MANY = 64

    def __init__(self, db: StateDB) -> None:
        self._db = db
        self._known: dict[tuple[str, str], str | None] = {}  # None: no published key
        self._written: dict[tuple[str, str], str | None] = {}  # by the runner: wins over a read
        self._asked: Counter[str] = Counter()  # rows read one at a time, per stage
        self._loaded: set[str] = set()  # stages read whole
        self._complete = False

    def _look(self, key: tuple[str, str]) -> str | None:
        stage = key[0]
        if key in self._known or self._complete or stage in self._loaded:
            return self._known.get(key)
        if self._asked[stage] >= self.MANY:
            self._load(stage)
            return self._known.get(key)
        self._asked[stage] += 1
        found = self._known[key] = self._db.current_key(*key)
        return found

    def _load(self, stage: str | None = None) -> None:
        """Read one stage's published keys (all with None); what was written through stays."""
        if stage is None:
            self._known = self._db.current_keys()  # type: ignore[assignment]
            self._complete = True
        else:
            found = self._db.current_keys_of(stage)
            self._known.update({(stage, b): k for b, k in found.items()})
            self._loaded.add(stage)
        self._known.update(self._written)

    def __getitem__(self, key: tuple[str, str]) -> str:
        found = self._look(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: tuple[str, str], default: str | None = None) -> str | None:  # type: ignore[override]
        found = self._look(key)  # (not Mapping's: that one raises and catches a KeyError)
        return default if found is None else found

    def __setitem__(self, key: tuple[str, str], value: str) -> None:
        self._known[key] = self._written[key] = value

    def __delitem__(self, key: tuple[str, str]) -> None:
        self[key]  # a KeyError when there is none
        self._known[key] = self._written[key] = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if not self._complete:
            self._load()
        return iter([k for k, v in self._known.items() if v is not None])

    def __len__(self) -> int:  # the whole table: never asked in a loop (test `is None`)
        return sum(1 for _ in self)
