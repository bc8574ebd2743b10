"""The monitoring report: one JSON value with a stable schema, and its HTML rendering.

Schema, version 1 (``kind`` "driftloop.monitoring_report")::

    schema_version, kind, generated_at (ISO 8601 UTC), project
    model        {name, version, uri}
    reference    {source: reference_columns | profile_sample | frame, rows}
    current      {kind: batch | prediction_log, rows, path | window {since, until},
                  rows_of_champion, labelled_rows_of_champion, model_versions,
                  labelled_rows_by_version}
    settings     the spec's monitoring section (method, alpha, permutations, drift_share, ...)
    data_drift   {dataset_drift, drift_share, share_of_drifted_columns,
                  weighted_share_of_drifted_columns, weights: uniform |
                  model_feature_importances | permutation_importance,
                  number_of_columns, number_of_drifted_columns, drifted_columns [names],
                  columns [<column>]}
    target_drift       <column> | null   (the target, when the current data has labels)
    prediction_drift   <column> | null   (binary classifiers: the positive class's
                                          probability; others: the prediction)
    performance        null | {metric, higher_is_better, holdout, tolerance,
                       tolerance_kind (relative for rmse, mae and log_loss: a share of the
                       holdout's value; absolute for bounded metrics), decay_bound (the
                       worst value that is not decay; null without a holdout value),
                       confidence, rows, overall {value, low, high, decayed}, windows
                       [{window, rows, value, low, high, decayed}], degraded, detectors
                       {stream, rows, detections {ADWIN|PageHinkley|DDM: {count, rows,
                       windows}}}}
    estimated_performance  null | {kind: "estimate", method, note, metrics, windows,
                       overall, holdout, below_holdout_by_more_than_tolerance}
    summary      {drift_detected, column_drift, performance_degraded, exit_code (0 | 3 | 4),
                  headline, messages}: exit_code 3 for dataset, target or prediction drift
                  or degraded performance; 4 (a warning) when only columns drifted, below
                  the dataset threshold; 0 when no column drifted and nothing degraded
    timings      {load_champion_s, total_s}
    paths        {json, html} (when written)

<column> is {column, role, kind, test, test_name, value, threshold, value_drift, effect,
effect_name, effect_threshold, noise_floor, p_value, drift, reason, reference_count,
reference_missing, current_count, current_missing, importance, plot}: ``value`` is the test's
statistic as Evidently defines it and ``value_drift`` Evidently's fixed-threshold verdict on
it; ``drift`` is driftloop's sample-size-aware decision (monitoring/decision.py). Numbers
that are not finite are null. New keys may be added within version 1; none is removed or
changes meaning.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from driftloop.core.layout import Output
from driftloop.core.spec import Spec
from driftloop.monitoring.drift import ColumnDrift, DataDrift, _jsonable
from driftloop.monitoring.performance import tolerance_text
from driftloop.monitoring.reference import Reference

SCHEMA_VERSION = 1
EXIT_DRIFT = 3  # dataset, target or prediction drift, or degraded performance
EXIT_COLUMN_DRIFT = 4  # a warning: some column drifted, below the dataset drift threshold


def number(value: Any, digits: int = 4) -> str:
    """A metric for a message: ``undefined`` when it could not be computed (null or NaN:
    labels the model never saw, one class in a window)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    return f"{value:.{digits}f}"


def headline(
    drift: DataDrift, prediction: ColumnDrift | None, target: ColumnDrift | None, degraded: bool
) -> str:
    """Dataset drift and column drift, both said (a table of drifted columns under "no
    drift" reads as a contradiction), then prediction, target and performance."""
    share = f"{drift.weighted_share:.0%} weighted share, threshold {drift.drift_share:.0%}"
    parts = [
        f"{'dataset drift' if drift.dataset_drift else 'no dataset drift'} ({share})",
        f"{len(drift.drifted)} of {len(drift.columns)} column(s) drifted",
    ]
    if prediction is not None and prediction.drift:
        parts.append("prediction drift")
    if target is not None and target.drift:
        parts.append("target drift")
    parts.append("performance degraded" if degraded else "performance not degraded")
    return "; ".join(parts)


def build_report(
    *,
    spec: Spec,
    champion_version: str,
    reference: Reference,
    current: dict[str, Any],
    drift: DataDrift,
    target: ColumnDrift | None,
    prediction: ColumnDrift | None,
    realized: dict[str, Any] | None,
    estimated: dict[str, Any] | None,
    now: dt.datetime,
    timings: dict[str, float],
) -> dict[str, Any]:
    messages = []
    if drift.dataset_drift:
        messages.append(
            f"dataset drift: {drift.weighted_share:.0%} of the features drifted "
            f"({drift.weights} weights; threshold {drift.drift_share:.0%})"
        )
    elif drift.drifted:
        messages.append(
            f"{len(drift.drifted)} feature(s) drifted ({', '.join(drift.drifted)}), below the "
            f"dataset threshold of {drift.drift_share:.0%}"
        )
    if prediction is not None and prediction.drift:
        messages.append(f"prediction drift: {prediction.reason}")
    if target is not None and target.drift:
        messages.append(f"target drift ({target.column}): {target.reason}")
    if realized is None and current.get("kind") == "prediction_log":
        others = sum(current.get("labelled_rows_by_version", {}).values())
        if others:
            messages.append(
                f"performance not measured: {current['labelled_rows_of_champion']} labelled "
                f"rows of the champion v{champion_version} in the window ({others} labelled "
                "rows in all, of other versions)"
            )
    degraded = bool(realized and realized["degraded"])
    if degraded and realized is not None:
        o = realized["overall"]
        messages.append(
            f"performance degraded: {realized['metric']} {number(o['value'])} "
            f"[{number(o['low'])}, {number(o['high'])}] vs holdout "
            f"{number(realized['holdout'])} (tolerance "
            f"{tolerance_text(realized['metric'], realized['tolerance'])})"
        )
    drifted = drift.dataset_drift or bool(prediction and prediction.drift)
    drifted = drifted or bool(target and target.drift)
    columns_drifted = bool(drift.drifted)
    exit_code = EXIT_DRIFT if drifted or degraded else EXIT_COLUMN_DRIFT if columns_drifted else 0
    report: dict[str, Any] = _jsonable(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": "driftloop.monitoring_report",
            "generated_at": now.astimezone(dt.UTC).isoformat(),
            "project": spec.name,
            "model": {
                "name": spec.name,
                "version": champion_version,
                "uri": f"models:/{spec.name}/{champion_version}",
            },
            "reference": {"source": reference.source, "rows": reference.rows},
            "current": current,
            "settings": spec.monitoring.model_dump(mode="json"),
            "data_drift": drift.to_dict(),
            "target_drift": target.to_dict() if target else None,
            "prediction_drift": prediction.to_dict() if prediction else None,
            "performance": realized,
            "estimated_performance": estimated,
            "summary": {
                "drift_detected": drifted,
                "column_drift": columns_drifted,
                "performance_degraded": degraded,
                "exit_code": exit_code,
                "headline": headline(drift, prediction, target, degraded),
                "messages": messages or ["no drift, no degradation"],
            },
            "timings": timings,
        }
    )
    return report


def write_reports(
    folder: Output, report: dict[str, Any], now: dt.datetime
) -> tuple[Output, Output]:
    """``<UTC time>-<model>-v<version>.json`` and ``.html``, each written then renamed (one
    PUT each on S3, which is atomic)."""
    from driftloop.monitoring.html import render

    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S")
    stem = f"{stamp}-{report['model']['name']}-v{report['model']['version']}"
    json_text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False)
    if isinstance(folder, str):
        from driftloop.core.s3outputs import put_object

        html = put_object(folder / f"{stem}.html", render(report).encode(), "text/html")
        # the JSON last: status reads the newest JSON, whose HTML is then there
        return put_object(folder / f"{stem}.json", json_text.encode(), "application/json"), html
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / f"{stem}.json", folder / f"{stem}.html"
    _atomic_write(json_path, json_text)
    _atomic_write(html_path, render(report))
    return json_path, html_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
