"""The prediction log and the feedback that serving writes, read for monitoring.

Layout (written by ``driftloop serve``, one Parquet part per flush; see
driftloop/serving/logbook.py), under the outputs root (``data/`` here, or the spec's
``outputs: s3://...``, where a monitor on another machine reads it)::

    <outputs>/monitoring/predictions/date=YYYY-MM-DD/part-*.parquet
        the contract's input columns as their contract types, then __ts (Datetime us, UTC),
        __request_id (String), __record (Int32: the record's index in its request),
        __model_name, __model_version (String), __prediction (String label, or Float64 for
        regression), __proba_<class> (Float64, classifiers), __flags (String, nullable)
    <outputs>/monitoring/feedback/date=YYYY-MM-DD/part-*.parquet
        __ts, __request_id, __record (Int32), __label (String; cast to the target's type)

The log's own columns start with ``__`` so that they never collide with a contract column.
Parts written before that convention (``ts``, ``request_id``, ``record``, ``model_name``,
``model_version``, ``prediction``, ``proba_<class>``, ``flags``, ``label``) are read too and
renamed. Parts may differ in their columns (a new model version with a new contract), so
they are concatenated diagonally: a column missing from a part is null there.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from driftloop.core.errors import DriftloopError, MonitoringError
from driftloop.core.layout import Layout, Output
from driftloop.core.logparts import list_parts, read_part
from driftloop.core.predlog import (
    CORRECTION,
    FEEDBACK_COLUMNS,
    KEYS,
    LABEL,
    PREDICTION_COLUMNS,
    RECORD,
    REQUEST_ID,
    TS,
)

_PLAIN = (
    "ts",
    "request_id",
    "record",
    "model_name",
    "model_version",
    "prediction",
    "flags",
    "label",
)


def _parts(folder: Output, since: dt.datetime | None, until: dt.datetime | None) -> list[Output]:
    """Parts whose date partition can hold rows in [since, until), on this machine or on S3
    (only those days' partitions are listed)."""
    return list_parts(
        folder,
        since.astimezone(dt.UTC).date() if since is not None else None,
        until.astimezone(dt.UTC).date() if until is not None else None,
    )


def _prefixed(frame: pl.DataFrame) -> pl.DataFrame:
    """A part in the plain layout (no ``__ts``) gets the log columns' ``__`` names."""
    if TS in frame.columns or "ts" not in frame.columns:
        return frame
    renames = {c: f"__{c}" for c in _PLAIN if c in frame.columns}
    renames |= {c: f"__{c}" for c in frame.columns if c.startswith("proba_")}
    return frame.rename(renames)


READERS = 16  # parts on S3 read at once (each is one GET, mostly waiting on the network)


def _read_one(part: Output, required: list[str]) -> pl.DataFrame:
    try:
        frame = _prefixed(read_part(part))
    except DriftloopError:
        raise  # the store's own error (S3 refused, a bucket gone) names it and the fix
    except Exception as exc:  # polars raises several kinds for a bad file
        raise MonitoringError(
            f"{part}: not a readable Parquet part ({type(exc).__name__}: {exc}); move it "
            "out of the log folder or delete it"
        ) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MonitoringError(
            f"{part}: lacks the column(s) {missing} every log part must have "
            f"({', '.join(required)}); it was not written by driftloop's serving"
        )
    return frame.with_columns(pl.col(TS).dt.replace_time_zone(None))


def _read(parts: list[Output], required: list[str]) -> pl.DataFrame:
    if len(parts) > 1 and not isinstance(parts[0], Path):  # on S3: several GETs at once
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(READERS, len(parts))) as pool:
            frames = list(pool.map(lambda p: _read_one(p, required), parts))  # in order
    else:
        frames = [_read_one(p, required) for p in parts]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def read_predictions(
    root: Path, *, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> pl.DataFrame:
    """Logged predictions with ``since <= __ts < until`` (UTC), oldest first; ``__ts`` is
    returned as naive UTC."""
    parts = _parts(Layout(root).predictions, since, until)
    frame = _read(parts, PREDICTION_COLUMNS)
    if frame.is_empty():
        return frame
    conditions = []
    if since is not None:
        conditions.append(pl.col(TS) >= _naive_utc(since))
    if until is not None:
        conditions.append(pl.col(TS) < _naive_utc(until))
    if conditions:
        frame = frame.filter(*conditions)
    return frame.sort([TS, *KEYS], maintain_order=True)


def read_feedback(root: Path) -> pl.DataFrame:
    """One label per (request id, record): the first one received, unless an admin sent a
    correction (then the latest correction). A later plain label never replaces the first,
    so a client cannot overwrite labels that are already in."""
    frame = _read(_parts(Layout(root).feedback, None, None), FEEDBACK_COLUMNS)
    if frame.is_empty():
        return frame
    if CORRECTION not in frame.columns:  # parts written before corrections existed
        frame = frame.with_columns(pl.lit(False).alias(CORRECTION))
    frame = frame.sort(TS, maintain_order=True)
    corrected = pl.col(CORRECTION).fill_null(False)
    first = frame.filter(~corrected).unique(subset=KEYS, keep="first", maintain_order=True)
    fixes = frame.filter(corrected).unique(subset=KEYS, keep="last", maintain_order=True)
    return (
        pl.concat([first.join(fixes, on=KEYS, how="anti"), fixes], how="diagonal_relaxed")
        .sort(TS, maintain_order=True)
        .select(TS, *KEYS, LABEL)
    )


def with_feedback(
    predictions: pl.DataFrame, feedback: pl.DataFrame, label_dtype: pl.DataType
) -> pl.DataFrame:
    """Predictions with a ``__label`` column (null where no feedback came), cast to the
    target's type."""
    if feedback.is_empty() or predictions.is_empty():
        return predictions.with_columns(pl.lit(None, label_dtype).alias(LABEL))
    labels = feedback.select(
        pl.col(REQUEST_ID).cast(pl.String),
        pl.col(RECORD).cast(pl.Int32),
        pl.col(LABEL).cast(label_dtype, strict=False),
    )
    return predictions.with_columns(
        pl.col(REQUEST_ID).cast(pl.String), pl.col(RECORD).cast(pl.Int32)
    ).join(labels, on=KEYS, how="left")
