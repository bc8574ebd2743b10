"""Monitoring on data at the edges (issue 12): a contract-valid extreme float (1e308) in the
drift tests, and a labelled batch of a single class in the report."""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings

import numpy as np
import polars as pl
import pytest

from driftloop.core.spec import MonitoringSpec, PerformanceMonitoring, parse_spec
from driftloop.monitoring.drift import data_drift
from driftloop.monitoring.html import render
from driftloop.monitoring.performance import Outcomes, realized_performance
from driftloop.monitoring.reference import Reference
from driftloop.monitoring.report import build_report

from .test_monitoring_units import BASE

NUMERIC_TESTS = ["ks", "psi", "wasserstein", "jensenshannon"]


def drift_of(ref: np.ndarray, cur: np.ndarray, test: str) -> dict:  # type: ignore[type-arg]
    reference = Reference.from_frame(pl.DataFrame({"x": ref}))
    result = data_drift(reference, pl.DataFrame({"x": cur}), MonitoringSpec(numeric_test=test))
    column: dict = result.columns[0].to_dict()  # type: ignore[type-arg]
    return column


@pytest.mark.parametrize("test", NUMERIC_TESTS)
@pytest.mark.parametrize("where", ["current", "reference", "both", "both signs"])
def test_an_extreme_float_neither_overflows_nor_crashes(test: str, where: str) -> None:
    """1e308 and -1e308 are finite floats: every numeric test reads them without an
    overflow (warnings are errors here) and reports finite numbers."""
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=3_000), rng.normal(size=400)
    if where in ("current", "both"):
        cur[3] = 1e308
    if where in ("reference", "both"):
        ref[5] = 1.7e308
    if where == "both signs":
        ref[5], cur[3] = -1e308, 1e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow is a RuntimeWarning: make it fail
        column = drift_of(ref, cur, test)
    for key in ("value", "effect", "p_value", "noise_floor"):
        assert column[key] is not None and math.isfinite(column[key]), (key, column)
    assert all(math.isfinite(e) for e in column["plot"]["edges"])
    assert column["current_count"] == 400 and column["reference_count"] == 3_000


@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_the_tests_are_the_same_at_any_scale(test: str) -> None:
    """The root fix: the tests are scale-free, so data times 2^1010 (up to ~1e305) gives
    the same verdict, the same numbers, as the data itself (it gave inf and NaN)."""
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=3_000), rng.normal(0.2, 1.0, size=800)
    small, huge = drift_of(ref, cur, test), drift_of(ref * 2.0**1010, cur * 2.0**1010, test)
    for key in ("value", "effect", "p_value", "noise_floor", "drift"):
        assert huge[key] == pytest.approx(small[key], rel=1e-9), key
    edges = np.asarray(huge["plot"]["edges"]) / 2.0**1010
    np.testing.assert_allclose(edges, small["plot"]["edges"], rtol=1e-9)


def one_class(metric: str, n: int = 1_000) -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(2)
    truth = np.array(["yes"] * n)
    score = rng.random(n)
    pred = np.where(score > 0.5, "yes", "no")
    o = Outcomes(truth, pred, np.c_[1 - score, score], ["no", "yes"], np.arange(n) // 500,
                 ["w0", "w1"])  # fmt: skip
    return realized_performance(metric, o, 0.8, PerformanceMonitoring(), rng)


def test_a_batch_of_one_class_renders_and_says_why_the_metric_is_undefined() -> None:
    perf = one_class("roc_auc")
    assert perf["overall"]["value"] != perf["overall"]["value"]  # NaN: undefined
    assert "one class only ('yes')" in perf["overall"]["undefined_reason"]
    assert all("one class only" in w["undefined_reason"] for w in perf["windows"])
    rng = np.random.default_rng(3)
    reference = Reference.from_frame(pl.DataFrame({"x": rng.normal(size=500)}))
    drift = data_drift(reference, pl.DataFrame({"x": rng.normal(size=300)}), MonitoringSpec())
    report = build_report(
        spec=parse_spec(BASE),
        champion_version="1",
        reference=reference,
        current={"kind": "batch", "path": "only-yes.csv", "rows": 1_000},
        drift=drift,
        target=None,
        prediction=None,
        realized=perf,
        estimated=None,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        timings={"total_s": 0.1},
    )
    text = json.dumps(report, allow_nan=False)
    assert "one class only" in text
    html = render(report)
    assert "<b>roc_auc is undefined</b>: the labels hold one class only (&#x27;yes&#x27;)" in html
    assert "2 window(s) where roc_auc is undefined: the labels hold one class only" in html


def test_labels_the_model_never_saw_are_named() -> None:
    rng = np.random.default_rng(4)
    n = 200
    score = rng.random(n)
    truth = np.where(rng.random(n) < 0.5, "maybe", "no")  # no "yes": ROC AUC is undefined
    o = Outcomes(truth, np.where(score > 0.5, "yes", "no"), np.c_[1 - score, score],
                 ["no", "yes"], np.zeros(n, dtype=int), ["w0"])  # fmt: skip
    perf = realized_performance("roc_auc", o, 0.5, PerformanceMonitoring(), rng)
    assert perf["overall"]["value"] != perf["overall"]["value"]
    assert "labels the model never saw ('maybe'" in perf["overall"]["undefined_reason"]
