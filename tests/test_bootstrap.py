"""The realized metric's bootstrap interval on sufficient statistics (monitoring/bootstrap.py):
the same metric as the row-level reference, the same interval as the dense row bootstrap,
and memory that does not grow with rows x resamples."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from driftloop.core.spec import PerformanceMonitoring
from driftloop.monitoring.bootstrap import (
    _statistic,
    percentile_interval,
    statistic,
    unique_rows,
)
from driftloop.monitoring.performance import Outcomes, metric_with_interval, weighted_metric

CLASSIFIER_METRICS = ["accuracy", "f1", "roc_auc", "average_precision", "log_loss"]


def classifier(n: int, classes: int, distinct: bool, rng: np.random.Generator) -> Outcomes:
    names = [f"c{i}" for i in range(classes)]
    truth = rng.choice(names, n)
    pred = np.where(rng.random(n) < 0.7, truth, rng.choice(names, n))
    proba = rng.dirichlet(np.ones(classes), n)
    if not distinct:  # a few distinct scores, many ties: as a small tree model gives
        proba = np.round(proba, 1) + 1e-3
        proba /= proba.sum(axis=1, keepdims=True)
    return Outcomes(truth, pred, proba, names, np.zeros(n, dtype=int), ["all"])


def regressor(n: int, rng: np.random.Generator) -> Outcomes:
    y = rng.normal(size=n)
    return Outcomes(y, y + rng.normal(size=n), None, None, np.zeros(n, dtype=int), ["all"])


def binary_scores(n: int, rng: np.random.Generator) -> Outcomes:
    positive = rng.random(n) < 0.3
    score = np.clip(rng.normal(0.3 + 0.3 * positive, 0.2), 0, 1)
    truth = np.where(positive, "yes", "no")
    pred = np.where(score > 0.5, "yes", "no")
    return Outcomes(
        truth, pred, np.c_[1 - score, score], ["no", "yes"], np.zeros(n, dtype=int), ["all"]
    )


def cases() -> list[tuple[str, Outcomes]]:
    rng = np.random.default_rng(1)
    out = []
    for classes in (2, 3):
        for distinct in (True, False):
            o = classifier(300, classes, distinct, rng)
            out += [(m, o) for m in CLASSIFIER_METRICS]
    reg = regressor(300, rng)
    return out + [(m, reg) for m in ("rmse", "mae", "r2")]


@pytest.mark.parametrize("metric,o", cases())
def test_cell_counts_score_exactly_what_the_rows_score(metric: str, o: Outcomes) -> None:
    """Any row weights, summed by cell, give the row-level reference's value: the metric
    reads nothing but the cell counts."""
    rng = np.random.default_rng(2)
    weights = rng.integers(0, 3, size=(6, len(o.y_true))).astype(float)
    keys, make = _statistic(metric, o)
    cells, counts, codes = unique_rows(keys)
    assert counts.sum() == len(o.y_true) and codes.max() == counts.size - 1
    by_cell = np.stack([np.bincount(codes, w, minlength=counts.size) for w in weights])
    expected = np.asarray(weighted_metric(metric, o, weights), dtype=float)
    got = np.asarray(make(cells)(by_cell), dtype=float)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def dense_reference(
    metric: str, o: Outcomes, resamples: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """The interval as driftloop computed it before: a dense rows x resamples multinomial."""
    n = len(o.y_true)
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    values = np.asarray(weighted_metric(metric, o, draws), dtype=float)
    values = values[np.isfinite(values)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@pytest.mark.parametrize(
    "metric,groups",
    [
        ("roc_auc", 1024),  # one group per distinct score: exact cells
        ("roc_auc", 16),  # merged groups, the inside pairs at their observed rate
        ("log_loss", 16),  # merged groups, the spread put back as a normal term
        ("accuracy", 1024),
        ("r2", 1024),  # the row-draw path: every row its own cell
    ],
)
def test_the_interval_agrees_with_the_dense_row_bootstrap(metric: str, groups: int) -> None:
    """Fixed seeds, 3,000 resamples each: the endpoints agree within a small share of the
    interval's width (their Monte Carlo error at this many resamples is a few percent)."""
    rng = np.random.default_rng(3)
    o = regressor(2_000, rng) if metric == "r2" else binary_scores(2_000, rng)
    low, high = dense_reference(metric, o, 3_000, 0.9, np.random.default_rng(4))
    value, new_low, new_high = percentile_interval(
        statistic(metric, o), None, 3_000, 0.9, np.random.default_rng(5), groups=groups
    )
    width = high - low
    assert value == pytest.approx(float(weighted_metric(metric, o, np.ones((1, 2_000)))[0]))
    assert abs(new_low - low) < 0.1 * width and abs(new_high - high) < 0.1 * width
    assert new_low < value < new_high


def test_grouping_changes_no_point_value_and_a_seed_repeats() -> None:
    o = binary_scores(5_000, np.random.default_rng(6))
    stat = statistic("roc_auc", o)
    few = percentile_interval(stat, None, 200, 0.95, np.random.default_rng(7), groups=8)
    again = percentile_interval(stat, None, 200, 0.95, np.random.default_rng(7), groups=8)
    exact = percentile_interval(stat, None, 200, 0.95, np.random.default_rng(7))
    assert few == again
    assert few[0] == exact[0]  # the value is always computed on the exact cells


@pytest.mark.parametrize("metric", ["roc_auc", "r2", "accuracy"])
def test_memory_does_not_grow_with_rows_times_resamples(metric: str) -> None:
    """200,000 rows x 200 resamples: the dense matrix alone was 320 MB (int64) and peaked
    above 2 GB with its float copies; now the chunks are bounded (a generous 128 MB)."""
    rng = np.random.default_rng(8)
    o = regressor(200_000, rng) if metric == "r2" else binary_scores(200_000, rng)
    rows = np.arange(200_000)
    tracemalloc.start()
    try:
        value, low, high = metric_with_interval(
            metric, o, rows, PerformanceMonitoring(bootstrap=200), np.random.default_rng(9)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert low <= value <= high
    assert peak < 128 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_no_rows_give_no_value_and_no_interval() -> None:
    o = binary_scores(50, np.random.default_rng(10))
    stat = statistic("roc_auc", o)
    got = percentile_interval(
        stat, np.array([], dtype=np.int64), 200, 0.95, np.random.default_rng(0)
    )
    assert all(v != v for v in got)  # three NaNs


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss"])
def test_a_small_window_agrees_with_the_dense_row_bootstrap(metric: str) -> None:
    """A window of 1,000 rows gets 25 groups by default: the interval still agrees."""
    o = binary_scores(1_000, np.random.default_rng(11))
    low, high = dense_reference(metric, o, 3_000, 0.9, np.random.default_rng(12))
    _, new_low, new_high = percentile_interval(
        statistic(metric, o), None, 3_000, 0.9, np.random.default_rng(13)
    )
    width = high - low
    assert abs(new_low - low) < 0.1 * width and abs(new_high - high) < 0.1 * width
