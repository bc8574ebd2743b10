"""Monitoring pieces on in-memory data: the spec section, the decision, the prediction log
reader, the reports, performance intervals and the label-free estimate."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.core.errors import MonitoringError, SpecError
from driftloop.core.spec import MonitoringSpec, PerformanceMonitoring, parse_spec
from driftloop.models.profile import holdout_frame, reference_columns, write_monitoring_frame
from driftloop.monitoring.drift import data_drift
from driftloop.monitoring.html import render
from driftloop.monitoring.performance import (
    Outcomes,
    estimated_performance,
    realized_performance,
)
from driftloop.monitoring.predlog import read_feedback, read_predictions, with_feedback
from driftloop.monitoring.reference import Reference
from driftloop.monitoring.report import build_report

BASE = {
    "name": "p",
    "task": "classification",
    "target": "y",
    "sources": [{"name": "s", "path": "data/raw/s/*.csv"}],
    "contract": {"columns": {"y": {"dtype": "str"}, "x": {"dtype": "float"}}},
}


# ---- the spec's monitoring section -------------------------------------------------------


def test_monitoring_section_defaults_and_overrides() -> None:
    assert parse_spec(BASE).monitoring == MonitoringSpec()
    assert parse_spec({**BASE, "monitoring": None}).monitoring == MonitoringSpec()
    spec = parse_spec(
        {**BASE, "monitoring": {"alpha": 0.01, "columns": {"x": {"test": "psi", "threshold": 0.2}}}}
    )
    assert spec.monitoring.alpha == 0.01 and spec.monitoring.columns["x"].test == "psi"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"alpah": 0.1}, "unknown key 'alpah' in monitoring; did you mean 'alpha'?"),
        ({"columns": {"x": {"tset": "ks"}}}, "unknown key 'tset'"),
        ({"columns": {"x": {"test": "kolmogorov"}}}, "monitoring.columns.x.test"),
        ({"numeric_test": "chisquare"}, "is for categorical columns"),
        ({"categorical_test": "wasserstein"}, "is for numeric columns"),
        ({"alpha": 1.5}, "monitoring.alpha"),
        ({"performance": {"tolerance": -1}}, "monitoring.performance.tolerance"),
    ],
)
def test_bad_monitoring_sections_are_named(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError, match=expected.replace("?", r"\?").replace(".", r"\.")):
        parse_spec({**BASE, "monitoring": section})


def test_a_test_that_does_not_fit_the_column_is_a_spec_error() -> None:
    frame = pl.DataFrame({"city": ["a", "b"] * 50})
    settings = MonitoringSpec.model_validate({"columns": {"city": {"test": "ks"}}})
    with pytest.raises(SpecError, match=r"monitoring\.columns\.city\.test: 'ks' does not apply"):
        data_drift(Reference.from_frame(frame), frame, settings)


# ---- the decision --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["numeric", "categorical"]))
def test_identical_samples_never_drift(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=300) if kind == "numeric" else rng.choice(list("abcd"), 300)
    frame = pl.DataFrame({"x": values})
    report = data_drift(Reference.from_frame(frame), frame, MonitoringSpec(), seed=seed)
    [column] = report.columns
    assert not column.drift and column.p_value == 1.0


def test_a_small_real_shift_at_large_n_is_significant_but_not_drift() -> None:
    rng = np.random.default_rng(0)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 200_000)})
    cur = pl.DataFrame({"x": rng.normal(0.03, 1, 200_000)})  # 0.03 std: real, negligible
    [column] = data_drift(Reference.from_frame(ref), cur, MonitoringSpec()).columns
    assert column.p_value is not None and column.p_value < 0.05
    assert not column.drift and "real but small" in column.reason
    settings = MonitoringSpec(method="fixed_threshold", numeric_test="ks")
    [ks] = data_drift(Reference.from_frame(ref), cur, settings).columns
    assert ks.drift  # a fixed p-value threshold calls it drift


def test_a_large_shift_in_a_small_window_is_drift() -> None:
    rng = np.random.default_rng(1)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 5_000), "c": rng.choice(list("ab"), 5_000)})
    cur = pl.DataFrame({"x": rng.normal(1, 1, 60), "c": ["b"] * 60})
    report = data_drift(Reference.from_frame(ref), cur, MonitoringSpec())
    assert report.drifted == ["x", "c"] and report.dataset_drift


def test_importance_weights_the_dataset_share() -> None:
    rng = np.random.default_rng(2)
    ref = pl.DataFrame({"a": rng.normal(size=3_000), "b": rng.normal(size=3_000)})
    cur = pl.DataFrame({"a": rng.normal(2, 1, 3_000), "b": rng.normal(size=3_000)})
    reference = Reference.from_frame(ref)
    plain = data_drift(reference, cur, MonitoringSpec())
    weighted = data_drift(reference, cur, MonitoringSpec(), importance={"a": 0.1, "b": 0.9})
    assert plain.share == 0.5 and plain.dataset_drift
    assert weighted.weighted_share == pytest.approx(0.1) and not weighted.dataset_drift
    assert weighted.weights == "feature_importance"


def test_disabled_columns_are_not_tested() -> None:
    frame = pl.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 4.0]})
    settings = MonitoringSpec.model_validate({"columns": {"b": {"enabled": False}}})
    assert [c.column for c in data_drift(Reference.from_frame(frame), frame, settings).columns] == [
        "a"
    ]


def test_reference_columns_file_reads_back_lazily(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frame = pl.DataFrame({"x": rng.normal(size=500), "c": rng.choice(list("xyz"), 500)})
    path = tmp_path / "reference_columns.parquet"
    write_monitoring_frame(reference_columns(frame, roles={"c": "target"}), path)
    reference = Reference.read(path)
    assert reference.columns["x"].data is None  # read when tested
    np.testing.assert_array_equal(reference.columns["x"].load().sorted_values, np.sort(frame["x"]))
    assert reference.by_role("target")[0].name == "c" and reference.rows == 500


def test_profile_fallback_reads_the_sample() -> None:
    from driftloop.models.profile import reference_profile

    frame = pl.DataFrame({"x": np.arange(100.0), "c": ["a", "b"] * 50})
    profile = reference_profile(
        frame, holdout_predictions=pl.Series([0.5]), holdout_metric={"roc_auc": 0.7}, seed=0
    )
    reference = Reference.from_profile(profile)
    assert reference.source == "profile_sample"
    assert reference.columns["x"].load().count == 100
    assert reference.columns["c"].load().count == 100


# ---- the prediction log --------------------------------------------------------------------


def write_part(root: Path, kind: str, day: str, name: str, frame: pl.DataFrame) -> None:
    folder = root / "data" / "monitoring" / kind / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(folder / name)


def log_rows(
    start: dt.datetime, n: int, version: str, extra: dict[str, Any], prefix: str = "__"
) -> pl.DataFrame:
    """Rows as serving writes them: the contract's columns, then the log's own."""
    return pl.DataFrame(
        {
            **extra,
            f"{prefix}ts": pl.Series(
                [start + dt.timedelta(hours=i) for i in range(n)], dtype=pl.Datetime("us", "UTC")
            ),
            f"{prefix}request_id": [f"{version}-{i}" for i in range(n)],
            f"{prefix}record": pl.Series([0] * n, dtype=pl.Int32),
            f"{prefix}model_name": ["p"] * n,
            f"{prefix}model_version": [version] * n,
            f"{prefix}prediction": ["yes"] * n,
            f"{prefix}proba_yes": [0.7] * n,
            f"{prefix}flags": pl.Series([None] * n, dtype=pl.String),
        }
    )


def test_parts_in_the_plain_layout_are_read_too(tmp_path: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    plain = log_rows(start, 2, "1", {"x": [1.0, 2.0]}, prefix="")
    write_part(tmp_path, "predictions", "2026-01-01", "part-0.parquet", plain)
    frame = read_predictions(tmp_path)
    assert {"__ts", "__prediction", "__proba_yes", "x"} <= set(frame.columns)


def test_log_parts_with_different_columns_concatenate_diagonally(tmp_path: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    write_part(
        tmp_path,
        "predictions",
        "2026-01-01",
        "part-0.parquet",
        log_rows(start, 3, "1", {"x": [1.0, 2.0, 3.0]}),
    )
    write_part(
        tmp_path,
        "predictions",
        "2026-01-02",
        "part-0.parquet",
        log_rows(start + dt.timedelta(days=1), 2, "2", {"x": [4.0, 5.0], "z": ["a", "b"]}),
    )
    write_part(tmp_path, "predictions", "2026-01-02", "notes.txt", pl.DataFrame())  # ignored
    frame = read_predictions(tmp_path)
    assert frame.height == 5 and frame.get_column("z").null_count() == 3
    window = read_predictions(
        tmp_path, since=start + dt.timedelta(hours=1), until=start + dt.timedelta(days=1, hours=1)
    )
    assert window.get_column("__request_id").to_list() == ["1-1", "1-2", "2-0"]


def test_feedback_joins_by_request_and_record_latest_wins(tmp_path: Path) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    write_part(
        tmp_path,
        "predictions",
        "2026-01-01",
        "part-0.parquet",
        log_rows(start, 3, "1", {"x": [1.0, 2.0, 3.0]}),
    )
    feedback = pl.DataFrame(
        {
            "__ts": pl.Series(
                [start, start + dt.timedelta(days=2)], dtype=pl.Datetime("us", "UTC")
            ),
            "__request_id": ["1-0", "1-0"],
            "__record": pl.Series([0, 0], dtype=pl.Int32),
            "__label": ["no", "yes"],
        }
    )
    write_part(tmp_path, "feedback", "2026-01-03", "part-0.parquet", feedback)
    joined = with_feedback(read_predictions(tmp_path), read_feedback(tmp_path), pl.String)
    # the first label stays: a later one cannot overwrite it (feedback poisoning)
    assert joined.get_column("__label").to_list() == ["no", None, None]
    # an admin's correction replaces it (the latest correction wins), and is kept when a
    # plain label comes after it
    later = [start + dt.timedelta(days=d) for d in (3, 4, 5)]
    fixes = pl.DataFrame(
        {
            "__ts": pl.Series(later, dtype=pl.Datetime("us", "UTC")),
            "__request_id": ["1-0", "1-0", "1-0"],
            "__record": pl.Series([0, 0, 0], dtype=pl.Int32),
            "__label": ["maybe", "yes", "no"],
            "__correction": [True, True, False],
            "__by": ["abc", "abc", None],
        }
    )
    write_part(tmp_path, "feedback", "2026-01-06", "part-0.parquet", fixes)
    joined = with_feedback(read_predictions(tmp_path), read_feedback(tmp_path), pl.String)
    assert joined.get_column("__label").to_list() == ["yes", None, None]


def test_a_log_part_without_the_log_columns_is_named(tmp_path: Path) -> None:
    write_part(tmp_path, "predictions", "2026-01-01", "part-0.parquet", pl.DataFrame({"a": [1]}))
    with pytest.raises(MonitoringError, match=r"part-0\.parquet: lacks the column\(s\)"):
        read_predictions(tmp_path)


# ---- performance ---------------------------------------------------------------------------


def outcomes(n: int, accuracy: float, rng: np.random.Generator) -> Outcomes:
    truth = rng.choice(["no", "yes"], n)
    right = rng.random(n) < accuracy
    pred = np.where(right, truth, np.where(truth == "yes", "no", "yes"))
    p_yes = np.where(pred == "yes", 0.8, 0.2)
    return Outcomes(
        truth,
        pred,
        np.c_[1 - p_yes, p_yes],
        ["no", "yes"],
        np.arange(n) // 500,
        [f"w{k}" for k in range(-(-n // 500))],
    )


def test_decay_needs_the_whole_interval_beyond_the_tolerance() -> None:
    rng = np.random.default_rng(0)
    perf = PerformanceMonitoring(tolerance=0.05, bootstrap=200)
    good = realized_performance("accuracy", outcomes(2_000, 0.80, rng), 0.80, perf, rng)
    bad = realized_performance("accuracy", outcomes(2_000, 0.60, rng), 0.80, perf, rng)
    assert not good["degraded"] and bad["degraded"]
    low, high = bad["overall"]["low"], bad["overall"]["high"]
    assert low < bad["overall"]["value"] < high < 0.75
    tiny = realized_performance("accuracy", outcomes(12, 0.6, rng), 0.80, perf, rng)
    assert not tiny["degraded"]  # 12 rows: the interval is too wide to say


def test_estimate_reproduces_a_calibrated_holdout() -> None:
    rng = np.random.default_rng(4)
    o = outcomes(4_000, 0.8, rng)
    holdout = holdout_frame(pl.Series(o.y_true), pl.Series(o.y_pred), o.proba, ["no", "yes"])
    windows = np.zeros(4_000, dtype=int)
    est = estimated_performance(
        holdout, ["no", "yes"], o.y_pred, o.proba, windows, ["all rows"], {"accuracy": 0.8}, 0.05
    )
    assert est["kind"] == "estimate"
    assert est["overall"]["accuracy"] == pytest.approx(np.mean(o.y_true == o.y_pred), abs=1e-9)


def test_report_json_and_html_are_self_contained() -> None:
    rng = np.random.default_rng(5)
    ref = pl.DataFrame({"x": rng.normal(size=2_000), "c": rng.choice(list("ab"), 2_000)})
    cur = pl.DataFrame({"x": rng.normal(1, 1, 500), "c": rng.choice(list("ab"), 500)})
    reference = Reference.from_frame(ref)
    drift = data_drift(reference, cur, MonitoringSpec())
    perf = realized_performance(
        "accuracy", outcomes(1_000, 0.6, rng), 0.8, PerformanceMonitoring(), rng
    )
    report = build_report(
        spec=parse_spec(BASE),
        champion_version="3",
        reference=reference,
        current={"kind": "batch", "path": "b.csv", "rows": 500},
        drift=drift,
        target=None,
        prediction=None,
        realized=perf,
        estimated=None,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        timings={"total_s": 0.1},
    )
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["schema_version"] == 1
    assert report["summary"]["exit_code"] == 3 and report["summary"]["drift_detected"] is True
    assert report["summary"]["performance_degraded"] is True
    html = render(report)
    assert html.count("<svg") >= 4 and "<script" not in html and "http" not in html
