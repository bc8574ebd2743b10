"""The prediction log and the feedback that serving writes, read for monitoring.

Layout (written by the serving process; one Parquet part per flush)::

    data/monitoring/predictions/date=YYYY-MM-DD/part-*.parquet
        ts (Datetime us, UTC), request_id (String), record (Int32: the record's index in
        its request), model_name (String), model_version (String), the contract's input
        columns as their contract types, prediction (String label, or Float64 for
        regression), proba_<class> (Float64, classifiers), flags (String, nullable)
    data/monitoring/feedback/date=YYYY-MM-DD/part-*.parquet
        ts, request_id, record (Int32), label (String; cast to the target's type on join)

Parts may differ in their columns (a new model version with a new contract), so they are
concatenated diagonally: a column missing from a part is null there.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from driftloop.errors import MonitoringError

PREDICTIONS = Path("data") / "monitoring" / "predictions"
FEEDBACK = Path("data") / "monitoring" / "feedback"
KEYS = ["request_id", "record"]


def _parts(folder: Path, since: dt.datetime | None, until: dt.datetime | None) -> list[Path]:
    """Part files whose date partition can hold rows in [since, until)."""
    found = []
    for day_dir in sorted(folder.glob("date=*")):
        try:
            day = dt.date.fromisoformat(day_dir.name.removeprefix("date="))
        except ValueError:
            continue  # not a partition driftloop wrote
        if since is not None and day < since.astimezone(dt.UTC).date():
            continue
        if until is not None and day > until.astimezone(dt.UTC).date():
            continue
        found += sorted(day_dir.glob("part-*.parquet"))
    return found


def _read(parts: list[Path], required: list[str]) -> pl.DataFrame:
    frames = []
    for part in parts:
        try:
            frame = pl.read_parquet(part)
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
        frames.append(frame.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _window(
    frame: pl.DataFrame, since: dt.datetime | None, until: dt.datetime | None
) -> pl.DataFrame:
    if frame.is_empty():
        return frame
    conditions = []
    if since is not None:
        conditions.append(pl.col("ts") >= _naive_utc(since))
    if until is not None:
        conditions.append(pl.col("ts") < _naive_utc(until))
    return frame.filter(*conditions) if conditions else frame


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def read_predictions(
    root: Path, *, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> pl.DataFrame:
    """Logged predictions with ``since <= ts < until`` (UTC), oldest first; ``ts`` is
    returned as naive UTC."""
    parts = _parts(root / PREDICTIONS, since, until)
    required = ["ts", *KEYS, "model_name", "model_version", "prediction"]
    frame = _window(_read(parts, required), since, until)
    return frame.sort(["ts", *KEYS], maintain_order=True) if frame.height else frame


def read_feedback(root: Path) -> pl.DataFrame:
    """Every label received, the latest per (request_id, record)."""
    frame = _read(_parts(root / FEEDBACK, None, None), ["ts", *KEYS, "label"])
    if frame.is_empty():
        return frame
    return (
        frame.sort("ts")
        .unique(subset=KEYS, keep="last", maintain_order=True)
        .select("ts", *KEYS, "label")
    )


def with_feedback(
    predictions: pl.DataFrame, feedback: pl.DataFrame, label_dtype: pl.DataType
) -> pl.DataFrame:
    """Predictions with a ``label`` column (null where no feedback came), cast to the
    target's type."""
    if feedback.is_empty() or predictions.is_empty():
        return predictions.with_columns(pl.lit(None, label_dtype).alias("label"))
    labels = feedback.select(
        pl.col("request_id").cast(pl.String),
        pl.col("record").cast(pl.Int32),
        pl.col("label").cast(label_dtype, strict=False),
    )
    return predictions.with_columns(
        pl.col("request_id").cast(pl.String), pl.col("record").cast(pl.Int32)
    ).join(labels, on=KEYS, how="left")
