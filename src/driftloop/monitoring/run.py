"""``driftloop monitor``: the champion's reference against current data, at the edges.

Reads the spec, the champion's package from the registry (reference columns, holdout,
model), and the current data: a batch (``current=PATH``: a raw CSV/Parquet file, or a
``data/processed/<batch>`` or ``data/features/<batch>`` folder) or a window of the
prediction log (with feedback labels joined by request id and record). Computes data,
target and prediction drift, realized performance when labels are there and the label-free
estimate for classifiers; writes the JSON and HTML reports and records ``DriftDetected`` /
``PerformanceDegraded`` events with the evidence.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftloop.core.errors import MonitoringError, NothingToMonitorError
from driftloop.core.layout import Layout, Output
from driftloop.core.spec import Spec
from driftloop.core.urls import ObjectUrl, url_scheme
from driftloop.monitoring.drift import ColumnDrift, column_drift, data_drift
from driftloop.monitoring.performance import (
    Outcomes,
    estimated_performance,
    realized_performance,
)
from driftloop.monitoring.reference import Reference

log = logging.getLogger(__name__)

EXIT_DRIFT = 3  # documented in cli.py: something drifted or performance degraded
EXIT_COLUMN_DRIFT = 4  # documented in cli.py: only columns drifted, below the dataset threshold


@dataclass(frozen=True)
class MonitorResult:
    report: dict[str, Any]
    json_path: Output | None
    html_path: Output | None

    @property
    def drift_detected(self) -> bool:
        return bool(self.report["summary"]["drift_detected"])

    @property
    def performance_degraded(self) -> bool:
        return bool(self.report["summary"]["performance_degraded"])

    @property
    def exit_code(self) -> int:
        return int(self.report["summary"]["exit_code"])


@dataclass
class Champion:
    version: str
    predictor: Any
    reference: Reference
    holdout: pl.DataFrame | None
    profile: dict[str, Any]


@dataclass
class Current:
    source: dict[str, Any]
    records: pl.DataFrame  # contract columns (raw or typed)
    predictions: pl.DataFrame | None  # prediction (+ proba_<class>) aligned with records
    labels: pl.Series | None
    time: pl.Series | None


def load_champion(spec: Spec, layout: Layout, version: str | None = None) -> Champion:
    """The champion (or the given version) with its reference data.

    A version read before by this process is taken from memory (:data:`KEPT` of them, the
    latest used; keyed by the model cache's folder and its files' times, which a version
    never changes): the loop's process checks every new batch against the same champion,
    and :func:`preload_champion` reads a new one as soon as it is promoted, off the path.
    """

    from driftloop.models.registry import CHAMPION, open_registry

    registry = open_registry(spec, layout)
    version = version or registry.alias(CHAMPION)
    if version is None:
        raise NothingToMonitorError(
            f"model {spec.name!r} has no champion to monitor; run 'driftloop run' to train "
            "and promote one"
        )
    from driftloop.models import cache as model_cache

    # from the machine's model cache (downloaded into it the first time)
    folder = model_cache.fetch(registry, layout, str(version)) / model_cache.PACKAGE
    key = _memo_key(folder)
    with _KEPT_LOCK:
        found = _KEPT.get(key)
        if found is not None:
            _KEPT.move_to_end(key)
            return found
    champion = _read_champion(str(version), folder)
    with _KEPT_LOCK:
        _KEPT[key] = champion
        while len(_KEPT) > KEPT:
            _KEPT.popitem(last=False)
    return champion


KEPT = 2  # champions a process keeps read (the one checked against, and a new one)
_KEPT: OrderedDict[tuple[str, tuple[int, ...]], Champion] = OrderedDict()
_KEPT_LOCK = threading.Lock()


def _memo_key(folder: Path) -> tuple[str, tuple[int, ...]]:
    """A cache folder and its files' modification times (a package rewritten in place, as
    a test may do, is read again)."""
    times = tuple(sorted(f.stat().st_mtime_ns for f in folder.iterdir() if f.is_file()))
    return str(folder.resolve()), times


def _read_champion(version: str, folder: Path) -> Champion:
    from driftloop.models.package import Predictor
    from driftloop.models.profile import profile_from_json

    profile = profile_from_json((folder / "reference_profile.json").read_text(encoding="utf-8"))
    columns = folder / "reference_columns.parquet"
    reference = Reference.read(columns) if columns.is_file() else Reference.from_profile(profile)
    holdout_path = folder / "reference_holdout.parquet"
    holdout = pl.read_parquet(holdout_path) if holdout_path.is_file() else None
    return Champion(version, Predictor(folder), reference, holdout, profile)


def preload_champion(project: Path, version: str) -> None:
    """Read ``version`` (its reference, holdout and fitted pipeline) into this process's
    memory, so the next batch's check against it starts with the model loaded; for a
    background thread after a promotion (a failure is logged: the check reads it then)."""
    from driftloop.core.spec import load_spec

    try:
        spec = load_spec(project)
        champion = load_champion(spec, Layout(project), version)
        champion.predictor.pipeline  # noqa: B018  # loaded on first use: now
    except Exception as exc:
        log.warning("reading v%s ahead of the next check failed: %s", version, exc)


def read_current_batch(
    spec: Spec, layout: Layout, path: Output
) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """Processed rows of a batch: a processed/features batch folder as prep wrote it (or
    its URL, for outputs on an object store), or a raw CSV/Parquet file put through prep
    here (the same read, cleaning and contract), with what prep made of it (None for a
    batch folder)."""
    from driftloop.core.layout import is_complete, scan_output

    if isinstance(path, ObjectUrl):
        if path.parent not in (layout.features, layout.processed):
            raise MonitoringError(
                f"{path}: not a batch of this project's outputs ({layout.processed}/<batch> "
                f"or {layout.features}/<batch>); pass one of those"
            )
        processed = layout.processed / path.name
        if not is_complete(processed):
            raise MonitoringError(
                f"{processed}: no complete processed output for batch {path.name}; "
                "run 'driftloop run'"
            )
        return scan_output(processed).collect(), None
    if not path.exists():
        raise MonitoringError(
            f"{path}: no such file or folder; pass a CSV/Parquet file or a "
            "data/processed/<batch> or data/features/<batch> folder"
        )
    folder = path if path.is_dir() else path.parent
    batch_folders = [Path(f).resolve() for f in (layout.features, layout.processed)]
    if not layout.on_object_store and folder.parent.resolve() in batch_folders:
        processed = layout.processed / folder.name
        if not is_complete(processed):
            raise MonitoringError(
                f"{processed}: no complete processed output for batch {folder.name}; "
                "run 'driftloop run'"
            )
        return scan_output(processed).collect(), None
    if path.is_dir():
        raise MonitoringError(
            f"{path}: a folder that is not a batch of data/processed or data/features; "
            "pass a file or a batch folder"
        )
    return prep_raw_file(spec, layout, path)


REASONS_SHOWN = 10  # the most common quarantine reasons a report lists


def prep_raw_file(
    spec: Spec, layout: Layout, path: Path
) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """A raw file through prep, in memory, as the primary source: its read options, the
    cleaning and the contract. Rows prep would quarantine (or drop as duplicates) are
    counted and their reasons listed, never scored, so a raw file gets the verdict its
    processed batch would."""
    import hashlib

    from driftloop.prep import SourceRead, prepare, read_raw
    from driftloop.prep.core import quarantine_reasons

    if len(spec.sources) > 1:
        joined = ", ".join(s.name for s in spec.sources[1:])
        raise MonitoringError(
            f"{path}: this project joins other sources ({joined}) to its primary rows, which a "
            "single raw file lacks; land the file in data/raw, run 'driftloop run' and "
            "monitor its batch: --current data/processed/<batch>"
        )
    source = spec.primary
    if path.suffix.lower() == ".parquet" and source.format != "parquet":
        source = source.model_copy(update={"format": "parquet"})
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    read = read_raw(path, source, layout.relative(path), stream_min_bytes=None)
    if read.error is not None:
        raise MonitoringError(
            f"{path}: cannot be read as source {source.name!r} says ({read.error}); check "
            "the file, or the source's csv options in driftloop.yaml"
        )
    prepared = prepare([SourceRead(source, digest.hexdigest(), read)], spec)
    counts = prepared.counts
    quarantined = prepared.quarantined
    reasons = quarantine_reasons(quarantined.lazy()) if quarantined.height else []
    summary = {
        **counts,
        "files_quarantined": prepared.plan.files_quarantined,
        "quarantine_reasons": reasons[:REASONS_SHOWN],
        "more_reasons": max(0, len(reasons) - REASONS_SHOWN),
    }
    if prepared.processed.is_empty():
        files = prepared.plan.files_quarantined
        why = files[0]["error"] if files else reasons[0]["reason"] if reasons else "no rows"
        raise MonitoringError(
            f"{path}: no row passes prep ({counts['rows_quarantined']} quarantined, "
            f"{counts['rows_duplicate']} duplicate; the first reason: {why}); nothing to "
            "monitor: fix the file, or the contract in driftloop.yaml"
        )
    return prepared.processed, summary


def _predict(champion: Champion, records: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    inputs = [c for c in spec.contract.columns if c in records.columns and c != spec.target]
    out: pl.DataFrame = champion.predictor.predict(records.select(inputs))
    return out


def current_from_batch(spec: Spec, layout: Layout, champion: Champion, path: Output) -> Current:
    records, prepped = read_current_batch(spec, layout, path)
    missing = [c for c in spec.contract.columns if c not in records.columns and c != spec.target]
    if missing:
        raise MonitoringError(
            f"{path}: lacks the contract column(s) {missing}; monitor data of this project's "
            "sources (or a data/processed batch)"
        )
    from driftloop.models.package import raw_records

    typed = raw_records(records, spec)
    labels = None
    if spec.target in records.columns and typed.get_column(spec.target).drop_nulls().len() > 0:
        labels = typed.get_column(spec.target)
    time_ = typed.get_column(spec.time_column) if spec.time_column else None
    source: dict[str, Any] = {"kind": "batch", "path": layout.relative(path), "rows": typed.height}
    if prepped is not None:
        source["prep"] = prepped  # a raw file: what prep kept, and why it kept the rest out
    return Current(
        source,
        typed,
        _predict(champion, typed, spec),
        labels,
        time_,
    )


def current_from_log(
    spec: Spec,
    layout: Layout,
    champion: Champion,
    *,
    since: dt.datetime,
    until: dt.datetime,
) -> Current:
    from driftloop.core import predlog as schema
    from driftloop.models.package import raw_records
    from driftloop.monitoring import predlog
    from driftloop.prep.rules import POLARS_TYPES

    logged = predlog.read_predictions(layout.root, since=since, until=until)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    if logged.is_empty():
        raise NothingToMonitorError(
            f"no predictions in {layout.relative(layout.predictions)} between "
            f"{since:%Y-%m-%d %H:%M} and "
            f"{until:%Y-%m-%d %H:%M} UTC; widen the window (--days) or pass --current PATH"
        )
    target_type = POLARS_TYPES[spec.contract.columns[spec.target].dtype]
    joined = predlog.with_feedback(logged, predlog.read_feedback(layout.root), target_type)
    versions = joined.get_column(schema.MODEL_VERSION).cast(pl.String)
    served = versions == champion.version
    # the model's outputs under the names Predictor.predict gives them
    outputs = {schema.PREDICTION: "prediction"} | {
        c: c.removeprefix("__") for c in joined.columns if c.startswith(schema.PROBA)
    }
    predictions = joined.select([pl.col(k).alias(v) for k, v in outputs.items()]).filter(served)
    all_labels = joined.get_column(schema.LABEL)
    labels = all_labels.filter(served)
    labelled = versions.filter(all_labels.is_not_null()).value_counts(sort=True)
    records = raw_records(
        joined.select([c for c in joined.columns if not c.startswith("__")]), spec
    )
    return Current(
        {
            "kind": "prediction_log",
            "window": window,
            "rows": joined.height,
            "rows_of_champion": int(served.sum()),
            "labelled_rows_of_champion": int(labels.drop_nulls().len()),
            "model_versions": sorted(versions.unique().drop_nulls().to_list()),
            "labelled_rows_by_version": dict(labelled.iter_rows()),
        },
        records,
        predictions,
        labels if labels.drop_nulls().len() else None,
        joined.get_column(schema.TS).filter(served),
    )


def feature_importance(predictor: Any) -> dict[str, float] | None:
    """Importances when the model exposes them for its inputs one to one (random forest)."""
    pipeline = predictor.pipeline
    model = pipeline.steps[-1][1]
    values = getattr(model, "feature_importances_", None)
    if values is None:
        return None
    try:
        names = list(pipeline[:-1].get_feature_names_out())
    except (AttributeError, ValueError):
        return None
    if sorted(names) != sorted(predictor.inputs) or len(names) != len(values):
        return None
    return {str(n): float(v) for n, v in zip(names, values, strict=True)}


def _prediction_series(champion: Champion, predictions: pl.DataFrame) -> pl.Series | None:
    """The current side of prediction drift, as the reference stored it."""
    classes = champion.predictor.classes
    if classes is not None and len(classes) == 2:
        column = f"proba_{classes[1]}"
        return predictions.get_column(column) if column in predictions.columns else None
    return predictions.get_column("prediction") if "prediction" in predictions.columns else None


def _windows(
    rows: int, time_: pl.Series | None, settings: Any
) -> tuple[np.ndarray[Any, Any], list[str]]:
    if settings.window_days is not None and time_ is not None and time_.null_count() == 0:
        t = time_.cast(pl.Datetime("us")) if time_.dtype == pl.Date else time_
        if isinstance(t.dtype, pl.Datetime):
            start = t.min()
            step = dt.timedelta(days=settings.window_days)
            index = ((t - start) / step).cast(pl.Int64, strict=False).to_numpy()
            uniq = np.unique(index)
            remap = np.searchsorted(uniq, index)
            labels = [f"{(start + step * int(k)):%Y-%m-%d}" for k in uniq]  # type: ignore[operator]
            return remap, labels
    size = settings.window_rows
    index = np.arange(rows) // size
    count = int(index.max()) + 1 if rows else 0
    if time_ is not None and time_.len() == rows and time_.null_count() == 0:
        # rows in time order: each window is named by the time of its first row (the chart's
        # x axis is then time)
        starts = time_.gather([k * size for k in range(count)]).to_list()
        return index, [_time_label(t) for t in starts]
    labels = [f"rows {k * size}-{min(rows, (k + 1) * size) - 1}" for k in range(count)]
    return index, labels


def _time_label(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    if isinstance(value, dt.date):
        return f"{value:%Y-%m-%d}"
    return str(value)


def _performance(
    spec: Spec, champion: Champion, current: Current, rng: np.random.Generator
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    settings = spec.monitoring.performance
    classes = champion.predictor.classes
    preds = current.predictions
    if preds is None or preds.is_empty():
        return None, None
    order = np.arange(preds.height)
    time_ = current.time
    if time_ is not None and time_.len() == preds.height and time_.null_count() == 0:
        order = np.argsort(time_.to_numpy(), kind="stable")
        time_ = time_[order]
    preds = preds[order]
    proba = (
        preds.select([f"proba_{c}" for c in classes]).to_numpy()
        if classes and all(f"proba_{c}" in preds.columns for c in classes)
        else None
    )
    estimated = None
    if classes and proba is not None and champion.holdout is not None:
        windows, labels = _windows(preds.height, time_, settings)
        estimated = estimated_performance(
            champion.holdout,
            [str(c) for c in classes],
            preds.get_column("prediction").cast(pl.String).to_numpy(),
            proba,
            windows,
            labels,
            champion.profile.get("holdout_metric", {}) | _holdout_extra(champion),
            settings.tolerance,
        )
    if estimated is not None and not estimated["overall"]:
        estimated = None  # fewer rows than a window needs
    if current.labels is None:
        return None, estimated
    y = current.labels[order]
    known = y.is_not_null().to_numpy()
    if known.sum() < 10:
        return None, estimated
    y_known = y.filter(pl.Series(known))
    t_known = (
        time_.filter(pl.Series(known)) if time_ is not None and time_.len() == known.size else None
    )
    windows, labels = _windows(int(known.sum()), t_known, settings)
    by_time = t_known is not None and t_known.null_count() == 0
    metric = spec.metric
    outcomes = Outcomes(
        y_true=(
            y_known.cast(pl.String).to_numpy().astype(str)
            if classes
            else y_known.cast(pl.Float64).to_numpy()
        ),
        y_pred=(
            preds.get_column("prediction")
            .filter(pl.Series(known))
            .cast(pl.String)
            .to_numpy()
            .astype(str)
            if classes
            else preds.get_column("prediction").filter(pl.Series(known)).cast(pl.Float64).to_numpy()
        ),
        proba=None if proba is None else proba[known],
        classes=[str(c) for c in classes] if classes else None,
        windows=windows,
        window_labels=labels,
    )
    holdout_value = champion.profile.get("holdout_metric", {}).get(metric)
    realized = realized_performance(metric, outcomes, holdout_value, settings, rng)
    realized["window_axis"] = "time" if by_time else "rows"
    return realized, estimated


def _holdout_extra(champion: Champion) -> dict[str, float | None]:
    """Holdout accuracy and ROC AUC from the stored holdout (for the estimate's baseline)."""
    h = champion.holdout
    classes = champion.predictor.classes
    if h is None or not classes:
        return {}
    truth = h.get_column("label").cast(pl.String).to_numpy().astype(str)
    pred = h.get_column("prediction").cast(pl.String).to_numpy().astype(str)
    out: dict[str, float | None] = {"accuracy": float(np.mean(truth == pred))}
    if len(classes) == 2:
        from sklearn.metrics import roc_auc_score

        positive = truth == str(classes[1])
        if 0 < positive.sum() < positive.size:
            out["roc_auc"] = float(roc_auc_score(positive, h.get_column(f"proba_{classes[1]}")))
    return out


def monitor(
    project: Path | str = ".",
    *,
    current: Path | str | None = None,
    days: float | None = None,
    until: dt.datetime | None = None,
    now: dt.datetime | None = None,
    write: bool = True,
    record_events: bool = True,
    version: str | None = None,
) -> MonitorResult:
    """Compare the champion's reference with current data; see the module docstring.

    ``now`` (default: the wall clock, UTC) stamps the report and ends the log window when
    ``until`` is not given; the log window covers ``days`` (default: the spec's
    ``monitoring.window_days``) before it. ``version``: a model version to compare
    instead of the champion (the loop checks a batch against the champion it arrived under).
    """
    from driftloop.core import executor as fan_out
    from driftloop.core.spec import load_spec
    from driftloop.monitoring.report import build_report, write_reports

    started = time.perf_counter()
    root = Path(project)
    spec = load_spec(root)
    layout = Layout(root)
    now = now or dt.datetime.now(dt.UTC)
    settings = spec.monitoring
    champion = load_champion(spec, layout, version)
    loaded = time.perf_counter()
    if current is not None:
        where = ObjectUrl(current) if url_scheme(str(current)) == "s3" else Path(current)
        cur = current_from_batch(spec, layout, champion, where)
    else:
        end = until or now
        span = dt.timedelta(days=days if days is not None else settings.window_days)
        cur = current_from_log(spec, layout, champion, since=end - span, until=end)
    features = champion.predictor.features(cur.records)
    importance, source = feature_importance(champion.predictor), "model_feature_importances"
    if importance is None:
        importance, source = champion.reference.importance(), "permutation_importance"
    rng_seed = settings.seed
    drift = data_drift(
        champion.reference,
        features,
        settings,
        importance=importance,
        importance_source=source,
        seed=rng_seed,
        executor=fan_out.current(),  # an orchestrator's cluster, or None: threads here
    )
    target = _single(champion.reference, "target", cur.labels, settings, rng_seed)
    prediction = None
    if cur.predictions is not None:
        series = _prediction_series(champion, cur.predictions)
        prediction = _single(champion.reference, "prediction", series, settings, rng_seed)
    realized, estimated = _performance(spec, champion, cur, np.random.default_rng(rng_seed))
    report = build_report(
        spec=spec,
        champion_version=champion.version,
        reference=champion.reference,
        current=cur.source,
        drift=drift,
        target=target,
        prediction=prediction,
        realized=realized,
        estimated=estimated,
        now=now,
        timings={
            "load_champion_s": round(loaded - started, 3),
            "total_s": round(time.perf_counter() - started, 3),
        },
    )
    json_path = html_path = None
    if write:
        json_path, html_path = write_reports(layout.reports, report, now)
        report["paths"] = {"json": layout.relative(json_path), "html": layout.relative(html_path)}
    if record_events:
        _record(layout, report, spec.state.url)
    return MonitorResult(report, json_path, html_path)


def _single(
    reference: Reference,
    role: str,
    series: pl.Series | None,
    settings: Any,
    seed: int,
) -> ColumnDrift | None:
    columns = reference.by_role(role)
    if not columns or series is None or series.drop_nulls().len() == 0:
        return None
    return column_drift(columns[0], series.drop_nulls(), settings, seed=seed)


def _record(layout: Layout, report: dict[str, Any], url: str | None) -> None:
    from driftloop.core.events import ColumnDriftDetected, DriftDetected, PerformanceDegraded
    from driftloop.core.state import StateDB

    summary = report["summary"]
    column_drift = bool(summary.get("column_drift")) and not report["data_drift"]["dataset_drift"]
    if not (summary["drift_detected"] or summary["performance_degraded"] or column_drift):
        return
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    base = {
        "model": report["model"]["name"],
        "version": report["model"]["version"],
        "current": report["current"],
        "report": report.get("paths"),
    }
    drift = report["data_drift"]
    drifted_columns = [
        {k: c[k] for k in ("column", "test", "value", "effect", "p_value", "reason")}
        for c in drift["columns"]
        if c["drift"]
    ]
    with StateDB(layout.state_db, url=url) as db:
        if column_drift:
            db.record(
                ColumnDriftDetected(
                    **base,
                    drift_share=drift["drift_share"],
                    weighted_share_of_drifted_columns=drift["weighted_share_of_drifted_columns"],
                    columns=drifted_columns,
                )
            )
        if summary["drift_detected"]:
            db.record(
                DriftDetected(
                    **base,
                    dataset_drift=drift["dataset_drift"],
                    weighted_share_of_drifted_columns=drift["weighted_share_of_drifted_columns"],
                    drift_share=drift["drift_share"],
                    columns=drifted_columns,
                    prediction_drift=_brief(report.get("prediction_drift")),
                    target_drift=_brief(report.get("target_drift")),
                )
            )
        if summary["performance_degraded"]:
            perf = report["performance"]
            db.record(
                PerformanceDegraded(
                    **base,
                    metric=perf["metric"],
                    holdout=perf["holdout"],
                    tolerance=perf["tolerance"],
                    tolerance_kind=perf["tolerance_kind"],
                    overall=perf["overall"],
                    decayed_windows=[w for w in perf["windows"] if w["decayed"]],
                )
            )


def _brief(column: dict[str, Any] | None) -> dict[str, Any] | None:
    if not column:
        return None
    return {
        k: column[k] for k in ("column", "test", "value", "effect", "p_value", "drift", "reason")
    }


__all__ = ["EXIT_COLUMN_DRIFT", "EXIT_DRIFT", "MonitorResult", "monitor"]
