"""The state database's tables, its URL and its engine (SQLAlchemy 2 Core).

SQLite is the embedded default (``.driftloop/state.db``, WAL); PostgreSQL is chosen by a
URL: the spec's ``state.url``, else ``DRIFTLOOP_STATE_URL``, else the project's file (the
spec wins: every worker of a project reads the same spec, so they cannot end up with
different ledgers; see :class:`driftloop.core.spec.StateSpec`). A bare ``postgresql://`` means
psycopg 3 (``pip install 'driftloop[postgres]'``); ``postgresql+psycopg2://`` works too when
psycopg2 is installed.

Writes are serialized the same way on both: SQLite's ``BEGIN IMMEDIATE`` takes the
database's one write lock; on PostgreSQL a write transaction first takes one
transaction-scoped advisory lock (:data:`WRITE_LOCK`). That keeps the read-then-write steps
of the single-writer era (a batch's ``seq``, the project lease) correct with many writers,
and it makes event ids commit in id order, so a reader that follows ``events_after(last)``
never skips an event whose id was allocated earlier but committed later. The writes are a
few small statements each, so the lock is held for milliseconds. Per-unit claims and
sightings do not take it: each is one atomic ``INSERT ... ON CONFLICT ...`` statement.

A URL is shown only through :func:`shown`, with its password as ``***``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from driftloop.core.errors import StateError, StateLockedError, disk_full, first_line, is_disk_full
from driftloop.core.redact import redact
from driftloop.core.spec import STATE_URL_ENV

# Raise SCHEMA_VERSION (core/state_peek.py) with every change to the tables below: SQLite
# records it in ``user_version`` and skips the schema check on open while it is current
# (1: the first SQLAlchemy schema, claims; 2: current_runs and facts; 3: an index of runs
# by status)
# 'driftloo' in ASCII: the key of the advisory lock every serialized write takes (PostgreSQL)
WRITE_LOCK = 0x6472696674_6C6F6F

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY on SQLite

metadata = sa.MetaData()

raw_files = sa.Table(
    "raw_files",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("ingested_at", sa.Text, nullable=False),
)
sightings = sa.Table(
    "sightings",
    metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, primary_key=True),
    sa.Column("mtime_ns", sa.BigInteger, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("seen_at", sa.Text, nullable=False),
)
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, unique=True),
    sa.Column("created_at", sa.Text, nullable=False),
)
stage_runs = sa.Table(
    "stage_runs",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("started_at", sa.Text, nullable=False),
    sa.Column("finished_at", sa.Text),
    sa.Column("seconds", sa.Double),
    sa.Column("output", sa.Text),
    sa.Column("error", sa.Text),
    sa.Index("stage_runs_batch", "stage", "batch_id"),
    sa.Index("stage_runs_status", "status"),  # the failures in the way, without a scan
    sa.Index("stage_runs_newest", "stage", "status", "finished_at"),  # a stage's last success
)
current_runs = sa.Table(  # the key whose output is published, per (stage, batch)
    "current_runs",
    metadata,
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
)
facts = sa.Table(  # small named facts a pass keeps (fingerprints)
    "facts",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
promotions = sa.Table(  # column order = the old SELECT * order (``applied`` came last)
    "promotions",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metric", sa.Text),
    sa.Column("challenger_score", sa.Double),
    sa.Column("champion_version", sa.Text),
    sa.Column("champion_score", sa.Double),
    sa.Column("baseline_score", sa.Double),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("applied", sa.Integer, nullable=False, server_default=sa.text("1")),
    sqlite_autoincrement=True,
)
events = sa.Table(
    "events",
    metadata,
    # AUTOINCREMENT on SQLite: an id is never reused, even after the newest row is deleted
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("events_type", "type", "id"),
    sqlite_autoincrement=True,
)
leases = sa.Table(  # the project-wide writer lease (orchestration/lease.py)
    "leases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)
claims = sa.Table(  # per-unit claims with expiry (prep:<batch>, train, ...), many workers
    "claims",
    metadata,
    sa.Column("unit", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)


def resolve_url(
    path: Path, spec_url: str | None = None, environ: Mapping[str, str] | None = None
) -> URL:
    """The state database's URL: the spec's, else ``DRIFTLOOP_STATE_URL``, else ``path``."""
    env = os.environ if environ is None else environ
    text = spec_url or env.get(STATE_URL_ENV) or None
    if text is None:
        return URL.create("sqlite", database=str(path))
    try:
        url = make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        raise StateError(
            f"{redact(text)}: not a database URL; expected "
            "postgresql://user@host:5432/database or sqlite:///path/state.db "
            f"(state.url in driftloop.yaml or {STATE_URL_ENV})"
        ) from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise StateError(
            f"{shown(url)}: the state database must be SQLite or PostgreSQL, "
            f"not {url.get_backend_name()}; fix state.url or {STATE_URL_ENV}"
        )
    return url


def shown(url: URL) -> str:
    """A URL fit for a log line, an error or a manifest: the password as ``***``."""
    return url.render_as_string(hide_password=True)


def reason(exc: BaseException, url: URL) -> str:
    """The first line of a driver's error, with the URL's password scrubbed if it shows."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


LOCK_WAIT_ENV = "DRIFTLOOP_STATE_LOCK_SECONDS"
LOCK_WAIT_SECONDS = 30.0  # how long a write waits for another process's lock (SQLite)


def lock_wait_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a write waits for the state database's lock: ``DRIFTLOOP_STATE_LOCK_SECONDS``
    (seconds, > 0) or 30."""
    text = (os.environ if environ is None else environ).get(LOCK_WAIT_ENV)
    if not text:
        return LOCK_WAIT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise StateError(
            f"{LOCK_WAIT_ENV}={text!r}: expected a number of seconds above 0 "
            f"(default {LOCK_WAIT_SECONDS:g}); fix or unset the variable"
        )
    return value


def _translated(url: URL, wait: float) -> Any:
    """A ``handle_error`` hook: a lock held too long and a full disk become driftloop's
    errors with what to do, whichever statement met them (SQLAlchemy raises what it
    returns); everything else stays as it was."""

    def handle(context: Any) -> BaseException | None:
        orig = context.original_exception
        where = str(url.database) if url.get_backend_name() == "sqlite" else shown(url)
        text = str(orig)
        if "database is locked" in text or "database table is locked" in text:
            return StateLockedError(
                f"{where}: the state database is locked: another process held its write "
                f"lock for more than {wait:g} s ({first_line(orig)}). Nothing was lost. See "
                "which process has the file open (fuser or lsof on it: a sqlite3 shell, a "
                "backup, a stuck driftloop), end it or wait for it, then run again; "
                f"{LOCK_WAIT_ENV} sets how long to wait"
            )
        if is_disk_full(orig):
            return disk_full(f"{where} (the state database)", orig)
        return None

    return handle


def make_engine(url: URL) -> Engine:
    """An engine whose transactions behave as the module docstring says."""
    if url.get_backend_name() == "sqlite":
        wait = lock_wait_seconds()
        # no pool: a StateDB keeps the connections it uses often and closes them on close()
        engine = sa.create_engine(url, connect_args={"timeout": wait}, poolclass=sa.pool.NullPool)
        sa.event.listen(engine, "handle_error", _translated(url, wait))

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # the driver's own transaction handling off: the "begin" hook below decides
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # A read is one statement, which SQLite runs as its own transaction: no BEGIN,
            # and the ROLLBACK SQLAlchemy sends after it does nothing. A write takes the
            # write lock first.
            if conn.get_execution_options().get("driftloop_write", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 15})
        sa.event.listen(engine, "handle_error", _translated(url, 15.0))
        return engine
    except ModuleNotFoundError as exc:
        raise StateError(
            f"{shown(url)}: the PostgreSQL driver is not installed ({exc.name}); "
            "pip install 'driftloop[postgres]'"
        ) from None


_SHARED: dict[str, Engine] = {}
_SHARED_LOCK = threading.Lock()
_FILES: OrderedDict[str, Engine] = OrderedDict()  # SQLite engines, the most recent kept
_FILES_KEPT = 32


def _forget_after_fork() -> None:
    # a forked child must not use (or close) its parent's connections: drop them unclosed
    for engine in _SHARED.values():
        engine.dispose(close=False)
    _SHARED.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def shared_engine(url: URL) -> Engine:
    """One engine (and connection pool) per server URL in this process: a ``StateDB`` opened
    per request or per poll (the server's champion thread) reuses its connections instead of
    connecting and authenticating each time."""
    key = url.render_as_string(hide_password=False)
    with _SHARED_LOCK:
        engine = _SHARED.get(key)
        if engine is None:
            engine = _SHARED[key] = make_engine(url)
        return engine


def file_engine(url: URL) -> Engine:
    """One engine per SQLite file in this process (the recent ones): it holds no connection
    (no pool), but its compiled statements, which cost more than opening the file."""
    key = str(url.database)
    with _SHARED_LOCK:
        engine = _FILES.get(key)
        if engine is None:
            engine = _FILES[key] = make_engine(url)
            while len(_FILES) > _FILES_KEPT:
                _FILES.popitem(last=False)
        _FILES.move_to_end(key)
        return engine


def ensure_schema(conn: sa.Connection) -> None:
    """Create what is missing; add columns that came after a database was created."""
    if not set(metadata.tables) <= set(conn.dialect.get_table_names(conn)):
        metadata.create_all(conn)
    for table in metadata.tables.values():  # indexes that came after a database was created
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    columns = {c["name"] for c in sa.inspect(conn).get_columns("promotions")}
    if "applied" not in columns:
        conn.execute(
            sa.text("ALTER TABLE promotions ADD COLUMN applied INTEGER NOT NULL DEFAULT 1")
        )
