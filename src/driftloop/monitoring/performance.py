"""Realized performance when labels arrive, its decay, streaming detectors, and a
label-free estimate for classifiers.

Realized performance: the champion's metric (the spec's) per window of labelled rows, with
a bootstrap confidence interval (resampling rows, ``bootstrap`` times; each resample is
drawn as counts of the metric's distinct cells, exactly the row bootstrap summed by cell, in
chunks of bounded size: see bootstrap.py). A window *decayed* when its whole interval is
worse than the holdout metric by more than ``tolerance``: the interval must clear the
tolerance, so a small window with a wide interval does not alarm on noise. The tolerance is
relative for error metrics (RMSE, MAE, log loss: unbounded, in the target's units, so 0.05
means 5% worse than the holdout's value) and absolute for bounded ones (ROC AUC, accuracy,
F1, average precision, R^2: 0.05 means 0.05 lower); see :func:`decay_bound`. ``degraded``
is true when all labelled rows together, or the latest window, decayed.

Streaming detectors (river): ADWIN and Page-Hinkley on the error stream (0/1 errors for
classifiers, absolute errors for regressors) and DDM on 0/1 errors, in row order; they
report where the error rate changed.

Estimated performance (classifiers, no labels needed; CBPE-like): the probability that a
prediction is right is read from its confidence through an isotonic calibration fitted on
the holdout (confidence of the predicted class -> was it right); expected accuracy is the
mean of those probabilities, and for two classes the expected ROC AUC treats the calibrated
positive probability as a soft label. It assumes the holdout's relation between confidence
and correctness still holds: it sees covariate shift, not concept drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftloop.core.spec import PerformanceMonitoring
from driftloop.models.metrics import HIGHER_IS_BETTER  # one table of metric directions
from driftloop.monitoring.bootstrap import percentile_interval, statistic

MIN_WINDOW_ROWS = 10


@dataclass(frozen=True)
class Outcomes:
    """Labelled rows in order: truth, prediction, class probabilities (classifiers)."""

    y_true: Any  # str labels (classifiers) or floats
    y_pred: Any
    proba: Any | None  # (n, classes) for classifiers
    classes: list[str] | None
    windows: Any  # window index per row (int array, nondecreasing)
    window_labels: list[str]


def weighted_metric(metric: str, o: Outcomes, weights: Any) -> Any:
    """The metric under each row of ``weights`` (draws x rows), vectorized where it can be.

    The row-level reference: the bootstrap scores cell counts instead (bootstrap.py), and the
    tests check that both agree exactly."""
    w = np.atleast_2d(weights).astype(np.float64)
    total = w.sum(axis=1)
    if metric in ("rmse", "mae", "r2"):
        err = np.asarray(o.y_pred, float) - np.asarray(o.y_true, float)
        if metric == "mae":
            return (w @ np.abs(err)) / total
        if metric == "rmse":
            return np.sqrt((w @ err**2) / total)
        y = np.asarray(o.y_true, float)
        mean = (w @ y) / total
        sst = w @ y**2 - total * mean**2
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1 - (w @ err**2) / sst
    truth = np.asarray(o.y_true).astype(str)
    pred = np.asarray(o.y_pred).astype(str)
    if metric == "accuracy":
        return (w @ (truth == pred)) / total
    assert o.classes is not None
    binary = len(o.classes) == 2
    if metric == "f1" and binary:
        positive = o.classes[1]
        tp = w @ ((pred == positive) & (truth == positive))
        fp = w @ ((pred == positive) & (truth != positive))
        fn = w @ ((pred != positive) & (truth == positive))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nan_to_num(2 * tp / (2 * tp + fp + fn))
    if metric == "roc_auc" and binary and o.proba is not None:
        return _weighted_auc(np.asarray(o.proba)[:, 1], truth == o.classes[1], w)
    if metric == "log_loss" and o.proba is not None:
        index = {c: i for i, c in enumerate(o.classes)}
        cols = np.array([index.get(t, -1) for t in truth])
        p = np.where(cols >= 0, np.asarray(o.proba)[np.arange(len(cols)), cols], 0.0)
        eps = np.finfo(np.float64).eps
        return (w @ -np.log(np.clip(p, eps, 1.0))) / total
    return np.array([_sklearn_metric(metric, o, row) for row in w])


def _weighted_auc(score: Any, positive: Any, w: Any) -> Any:
    """Binary ROC AUC under row weights: P(score_pos > score_neg) + half the ties."""
    order = np.argsort(score, kind="stable")
    s, pos, w = score[order], positive[order], w[:, order]
    wp, wn = w * pos, w * ~pos
    # negatives strictly below each value, and tied with it
    starts = np.searchsorted(s, s, side="left")
    ends = np.searchsorted(s, s, side="right")
    cum_n = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(wn, axis=1)], axis=1)
    below = cum_n[:, starts]
    tied = cum_n[:, ends] - below
    num = (wp * (below + 0.5 * tied)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def _sklearn_metric(metric: str, o: Outcomes, weights: Any) -> float:
    from sklearn import metrics as m

    truth = np.asarray(o.y_true).astype(str)
    keep = weights > 0
    try:
        if metric == "average_precision" and o.classes and o.proba is not None:
            return float(
                m.average_precision_score(
                    truth[keep] == o.classes[1],
                    np.asarray(o.proba)[keep, 1],
                    sample_weight=weights[keep],
                )
            )
        if metric == "roc_auc" and o.classes and o.proba is not None:
            return float(
                m.roc_auc_score(
                    truth[keep],
                    np.asarray(o.proba)[keep],
                    multi_class="ovr",
                    labels=o.classes,
                    sample_weight=weights[keep],
                )
            )
        if metric == "f1":
            return float(
                m.f1_score(
                    truth[keep],
                    np.asarray(o.y_pred).astype(str)[keep],
                    average="macro",
                    sample_weight=weights[keep],
                    zero_division=0,
                )
            )
    except ValueError:  # one class only in a resample
        return math.nan
    return math.nan


def metric_with_interval(
    metric: str, o: Outcomes, rows: Any, settings: PerformanceMonitoring, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(value, low, high): the metric on ``rows`` and its percentile bootstrap interval,
    computed on the metric's sufficient statistics in bounded memory (bootstrap.py)."""
    return percentile_interval(
        statistic(metric, o), rows, settings.bootstrap, settings.confidence, rng
    )


def undefined_reason(metric: str, o: Outcomes, rows: Any) -> str:
    """Why ``metric`` has no value on ``rows``, in words for the report."""
    if o.classes is None:
        y = np.asarray(o.y_true, float)[rows]
        if metric == "r2" and y.size and np.all(y == y[0]):
            return f"the labels are all {y[0]:g}: r2 divides by their variance, which is 0"
        return f"{metric} could not be computed on these {rows.size:,} rows (missing values?)"
    present = sorted(set(np.asarray(o.y_true).astype(str)[rows].tolist()))
    unseen = [label for label in present if label not in o.classes]
    if unseen and metric in ("roc_auc", "average_precision", "log_loss"):
        return (
            f"labels the model never saw ({', '.join(repr(u) for u in unseen[:5])}; it knows "
            f"{o.classes}): {metric} needs the model's probability of the true label"
        )
    if len(present) == 1 and metric in ("roc_auc", "average_precision"):
        return (
            f"the labels hold one class only ({present[0]!r}): {metric} ranks the rows of "
            "one class against the others', so it needs rows of each class"
        )
    return f"{metric} could not be computed on these {rows.size:,} rows"


# Error metrics have no upper bound and take the target's scale (RMSE in rentals per hour,
# in dollars...), so one number cannot be a tolerance for all of them: theirs is a share of
# the holdout's value. Bounded metrics (at most 1) take it in their own units.
RELATIVE_TOLERANCE = ("rmse", "mae", "log_loss")


def tolerance_kind(metric: str) -> str:
    """``relative`` (a share of the holdout's value) or ``absolute`` (metric units)."""
    return "relative" if metric in RELATIVE_TOLERANCE else "absolute"


def decay_bound(metric: str, holdout: float, tolerance: float) -> float:
    """The worst value of ``metric`` that is not yet decay, given the holdout's value."""
    if HIGHER_IS_BETTER[metric]:
        return holdout - tolerance
    if tolerance_kind(metric) == "relative":
        return holdout + abs(holdout) * tolerance
    return holdout + tolerance


def tolerance_text(metric: str, tolerance: float) -> str:
    """The tolerance as a person reads it: ``relative, 5% of the holdout's rmse`` or
    ``absolute, 0.05``."""
    if tolerance_kind(metric) == "relative":
        return f"relative, {tolerance:.4g} = {tolerance:.1%} of the holdout's {metric}"
    return f"absolute, {tolerance:g}"


def decayed(metric: str, low: float, high: float, holdout: float, tolerance: float) -> bool:
    """The whole interval is worse than the holdout by more than the tolerance."""
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(holdout)):
        return False
    bound = decay_bound(metric, holdout, tolerance)
    if HIGHER_IS_BETTER[metric]:
        return high < bound
    return low > bound


def realized_performance(
    metric: str,
    outcomes: Outcomes,
    holdout_value: float | None,
    settings: PerformanceMonitoring,
    rng: np.random.Generator,
) -> dict[str, Any]:
    holdout = math.nan if holdout_value is None else float(holdout_value)
    stat = statistic(metric, outcomes)  # per-row keys, once for every window
    windows = []
    for index, label in enumerate(outcomes.window_labels):
        rows = np.flatnonzero(outcomes.windows == index)
        if rows.size < MIN_WINDOW_ROWS:
            continue
        value, low, high = percentile_interval(
            stat, rows, settings.bootstrap, settings.confidence, rng
        )
        entry = {
            "window": label,
            "rows": int(rows.size),
            "value": value,
            "low": low,
            "high": high,
            "decayed": decayed(metric, low, high, holdout, settings.tolerance),
        }
        if not math.isfinite(value):
            entry["undefined_reason"] = undefined_reason(metric, outcomes, rows)
        windows.append(entry)
    all_rows = np.arange(len(outcomes.y_true))
    value, low, high = percentile_interval(stat, None, settings.bootstrap, settings.confidence, rng)
    overall = decayed(metric, low, high, holdout, settings.tolerance)
    latest = bool(windows and windows[-1]["decayed"])
    return {
        "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER[metric],
        "holdout": holdout if math.isfinite(holdout) else None,
        "tolerance": settings.tolerance,
        "tolerance_kind": tolerance_kind(metric),
        "decay_bound": decay_bound(metric, holdout, settings.tolerance)
        if math.isfinite(holdout)
        else None,
        "confidence": settings.confidence,
        "rows": int(all_rows.size),
        "overall": {
            "value": value,
            "low": low,
            "high": high,
            "decayed": overall,
            **(
                {}
                if math.isfinite(value)
                else {"undefined_reason": undefined_reason(metric, outcomes, all_rows)}
            ),
        },
        "windows": windows,
        "degraded": overall or latest,
        "detectors": streaming_detectors(outcomes),
    }


def streaming_detectors(o: Outcomes) -> dict[str, Any]:
    """ADWIN, Page-Hinkley (and DDM for classifiers) over the error stream, in row order."""
    from river import drift

    if o.classes is not None:
        errors = (np.asarray(o.y_true).astype(str) != np.asarray(o.y_pred).astype(str)).astype(
            float
        )
        stream = "0/1 error"
    else:
        errors = np.abs(np.asarray(o.y_pred, float) - np.asarray(o.y_true, float))
        stream = "absolute error"
    detectors: dict[str, Any] = {
        "ADWIN": drift.ADWIN(),  # type: ignore[no-untyped-call]  # river is untyped here
        "PageHinkley": drift.PageHinkley(),
    }
    if o.classes is not None:
        detectors["DDM"] = drift.binary.DDM()
    found: dict[str, list[int]] = {name: [] for name in detectors}
    values = errors.tolist()
    for name, detector in detectors.items():  # independent: one tight loop each
        update, rows = detector.update, found[name]
        for i, e in enumerate([bool(v) for v in values] if name == "DDM" else values):
            update(e)
            if detector.drift_detected:
                rows.append(i)
    return {
        "stream": stream,
        "rows": int(errors.size),
        "detections": {
            name: {
                "count": len(rows),
                "rows": rows[:50],
                "windows": sorted({o.window_labels[int(o.windows[r])] for r in rows}),
            }
            for name, rows in found.items()
        },
    }


def estimated_performance(
    holdout: Any,  # polars frame: label, prediction, proba_<class>
    classes: list[str],
    predictions: Any,  # str labels, in order
    proba: Any,  # (n, classes)
    windows: Any,
    window_labels: list[str],
    holdout_metric: dict[str, float | None],
    tolerance: float,
) -> dict[str, Any]:
    """The CBPE-like label-free estimate of accuracy (and ROC AUC for two classes)."""
    from sklearn.isotonic import IsotonicRegression

    h_proba = holdout.select([f"proba_{c}" for c in classes]).to_numpy()
    h_pred = holdout.get_column("prediction").cast(str).to_numpy().astype(str)
    h_true = holdout.get_column("label").cast(str).to_numpy().astype(str)
    index = {c: i for i, c in enumerate(classes)}

    def confidence(p: Any, pred: Any) -> Any:
        cols = np.array([index.get(v, 0) for v in pred])
        return p[np.arange(len(cols)), cols]

    right = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
    right.fit(confidence(h_proba, h_pred), (h_pred == h_true).astype(float))
    pred = np.asarray(predictions).astype(str)
    p_right = right.predict(confidence(np.asarray(proba), pred))
    positive = None
    if len(classes) == 2:
        positive = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
        positive.fit(h_proba[:, 1], (h_true == classes[1]).astype(float))
    out_windows = []
    metrics = ["accuracy"] + (["roc_auc"] if positive is not None else [])
    for i, label in enumerate([*window_labels, "all"]):
        rows = np.flatnonzero(windows == i) if label != "all" else np.arange(len(pred))
        if rows.size < MIN_WINDOW_ROWS:
            continue
        entry: dict[str, Any] = {
            "window": label,
            "rows": int(rows.size),
            "accuracy": float(p_right[rows].mean()),
        }
        if positive is not None:
            q = positive.predict(np.asarray(proba)[rows, 1])
            entry["roc_auc"] = _soft_auc(np.asarray(proba)[rows, 1], q)
        out_windows.append(entry)
    overall = out_windows[-1] if out_windows else {}
    flags = {}
    for m in metrics:
        base = holdout_metric.get(m)
        value = overall.get(m)
        flags[m] = bool(base is not None and value is not None and value < base - tolerance)
    return {
        "kind": "estimate",
        "method": "CBPE-like: isotonic calibration of confidence on the holdout; no labels",
        "note": "an estimate, not a measurement: it cannot see concept drift",
        "metrics": metrics,
        "windows": out_windows[:-1],
        "overall": overall,
        "holdout": {m: holdout_metric.get(m) for m in metrics},
        "below_holdout_by_more_than_tolerance": flags,
    }


def _soft_auc(score: Any, q: Any) -> float:
    """Expected ROC AUC when row i is positive with probability q_i (pairs i != j)."""
    order = np.argsort(score, kind="stable")
    s, q = score[order], q[order]
    neg = 1 - q
    cum = np.concatenate([[0.0], np.cumsum(neg)])
    starts = np.searchsorted(s, s, side="left")
    ends = np.searchsorted(s, s, side="right")
    below, tied = cum[starts], cum[ends] - cum[starts]
    num = float(np.sum(q * (below + 0.5 * tied))) - 0.5 * float(np.sum(q * neg))
    den = float(q.sum() * neg.sum() - np.sum(q * neg))
    return num / den if den > 0 else math.nan
