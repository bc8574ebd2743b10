"""The served model learns from the newest rows (``model.refit_on_all``), while the gate
compares models that never saw its holdout (issue 11, section 3).

Synthetic regression data where a category appears only in the newest rows, with a large
effect: the model fitted without the holdout cannot know it, the served one must.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.models import cache as model_cache
from driftloop.models import inference
from driftloop.models.package import EVALUATION_PIPELINE, Predictor
from driftloop.pipeline import run
from driftloop.testing import InMemoryRegistry, forget, memory_store

from .helpers import write_spec

SPEC = """
name: refit
task: regression
target: y
time_column: t
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    t: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    x: {dtype: float}
    c: {dtype: str}
    y: {dtype: float, nullable: false}
ingest: {settle_seconds: 0}
"""

NEW = "new"  # a category only the newest rows have
JUMP = 50.0  # its effect on the target


def land(project: Path, name: str, rows: int, *, seed: int, day: int, newest: float) -> None:
    """``rows`` rows over 10 days from ``day``; the newest ``newest`` share has category
    NEW, which adds JUMP to the target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    cut = round(rows * (1 - newest))
    c = np.where(np.arange(rows) >= cut, NEW, rng.choice(["a", "b"], rows))
    y = 3 * x + (c == NEW) * JUMP + rng.normal(scale=0.1, size=rows)
    t = [
        f"2024-01-{1 + day + i * 10 // rows:02d} {i % 24:02d}:{i % 60:02d}:00" for i in range(rows)
    ]
    frame = pl.DataFrame({"t": t, "x": x.round(4), "c": c, "y": y.round(4)})
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_csv(folder / name)


@pytest.fixture
def registry() -> Iterator[InMemoryRegistry]:
    found = memory_store("refit")
    yield found
    forget(found.uri)


def write(
    project: Path, registry: InMemoryRegistry, promotion: dict[str, Any] | None = None, **model: Any
) -> None:
    data = yaml.safe_load(SPEC)
    data["model"] = {**model, "tracking_uri": registry.uri}
    if promotion:
        data["promotion"] = promotion
    write_spec(project, yaml.safe_dump(data, sort_keys=False))


def ran(result: Any, stage: str) -> dict[str, Any]:
    [report] = [r for r in result.reports if r.stage == stage]
    assert report.outcome == "ran", report.error
    manifest: dict[str, Any] = report.manifest
    return manifest


def package(project: Path, registry: InMemoryRegistry, version: str) -> Path:
    return model_cache.fetch(registry, Layout(project), version) / model_cache.PACKAGE


def new_rows(n: int = 20) -> pl.DataFrame:
    """Raw records of the newest kind."""
    return pl.DataFrame(
        {"t": ["2024-01-20 10:00:00"] * n, "x": np.linspace(-1, 1, n), "c": [NEW] * n}
    )


def test_the_served_model_learns_from_the_holdout(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    write(tmp_path, registry)
    land(tmp_path, "a.csv", 1000, seed=1, day=0, newest=0.1)  # NEW only in the holdout
    result = run(tmp_path)
    train = ran(result, "train")
    assert train["refit_on_all"] is True
    assert train["train_rows"] + train["holdout_rows"] == train["served_rows"] == 1000

    folder = package(tmp_path, registry, train["version"])
    served, evaluation = Predictor(folder), Predictor(folder, evaluation=True)
    assert (folder / EVALUATION_PIPELINE).is_file()
    truth = 3 * new_rows().get_column("x").to_numpy() + JUMP
    served_error = np.abs(served.predict(new_rows()).get_column("prediction") - truth).mean()
    blind_error = np.abs(evaluation.predict(new_rows()).get_column("prediction") - truth).mean()
    assert served_error < 5 < JUMP / 2 < blind_error  # only the served model knows NEW

    # The holdout metric is the evaluation model's, scored on rows it never saw: the served
    # model, which learned them, would score far better there.
    from driftloop.promotion.gate import holdout_records, rescore

    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    holdout = pl.read_parquet(
        tmp_path / "data" / "models" / train["run_key"][:16] / "holdout.parquet"
    )
    with StateDB(layout.state_db) as db:
        records = holdout_records(layout, db, holdout)
    assert rescore(evaluation, records, spec)["rmse"] == pytest.approx(train["metrics"]["rmse"])
    assert rescore(served, records, spec)["rmse"] < train["metrics"]["rmse"] / 3

    # Recorded with the version: params, tags, lineage.
    stored = registry._versions[train["version"]]
    assert stored.params["served_rows"] == "1000"
    assert stored.params["refit_on_all"] == "True"
    assert stored.params["train_rows"] == str(train["train_rows"])
    assert stored.tags["driftloop.served_rows"] == "1000"
    trained_on = registry.lineage(train["version"])["trained_on"]
    assert trained_on == {
        "train_rows": train["train_rows"],
        "holdout_rows": train["holdout_rows"],
        "served_rows": 1000,
        "refit_on_all": True,
        "split": "time",
    }
    # The reference profile and the monitoring reference describe what the served model
    # learned from: every row, NEW included.
    profile = json.loads((folder / "reference_profile.json").read_text())
    assert profile["row_count"] == 1000
    categories = profile["columns"]["c"]["categories"]
    assert NEW in categories
    reference = pl.read_parquet(folder / "reference_columns.parquet")
    target = reference.filter(pl.col("role") == "target").row(0, named=True)
    assert target["count"] == 1000
    # The holdout reference (monitoring's calibration) holds out-of-sample predictions.
    holdout_ref = pl.read_parquet(folder / "reference_holdout.parquet")
    assert holdout_ref.height == train["holdout_rows"]

    # `driftloop models` says what the served model learned from.
    listed = CliRunner().invoke(app, ["models", "-p", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert f"learned from 1000 rows (holdout {train['holdout_rows']} included)" in listed.stdout


def test_the_compiled_path_is_the_served_model(tmp_path: Path, registry: InMemoryRegistry) -> None:
    """The verified compiled path that serving uses is compiled from the refitted pipeline
    and verified on a sample of the rows it learned from."""
    write(tmp_path, registry)
    land(tmp_path, "a.csv", 1000, seed=2, day=0, newest=0.1)
    train = ran(run(tmp_path), "train")
    entry = package(tmp_path, registry, train["version"]).parent
    verdict = inference.load(entry / model_cache.COMPILED)
    assert verdict is not None and verdict.compiled is not None, "no compiled path was kept"
    served = Predictor(entry / model_cache.PACKAGE)
    features = served.features(new_rows())
    compiled_values, _ = verdict.compiled.predict_features(features)
    served_values, _ = served.predict_features(features)
    np.testing.assert_allclose(compiled_values, served_values, atol=1e-6)
    assert np.mean(served_values) > JUMP / 2  # the refitted model's view of NEW


def test_refit_off_serves_the_model_fitted_without_the_holdout(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    write(tmp_path, registry, refit_on_all=False)
    land(tmp_path, "a.csv", 1000, seed=3, day=0, newest=0.1)
    train = ran(run(tmp_path), "train")
    assert train["refit_on_all"] is False
    assert train["served_rows"] == train["train_rows"] < 1000
    folder = package(tmp_path, registry, train["version"])
    assert not (folder / EVALUATION_PIPELINE).exists()
    assert (
        json.loads((folder / "reference_profile.json").read_text())["row_count"]
        == (train["train_rows"])
    )
    listed = CliRunner().invoke(app, ["models", "-p", str(tmp_path)])
    assert f"learned from {train['train_rows']} rows\n" in listed.stdout.replace("  \n", "\n")


def test_the_gate_scores_the_champion_by_its_model_fitted_without_its_holdout(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """A small second batch: the new holdout (the newest 20% of the window) reaches back
    into rows the champion's served (refitted) model learned from. Scored by that model the
    champion would look better than it is; the gate uses the champion's evaluation model,
    which never saw them, as the challenger's figure comes from one that never saw them."""
    # the first model cannot know NEW (only its holdout has it): served all the same
    write(tmp_path, registry, promotion={"must_beat_baseline": False})
    land(tmp_path, "a.csv", 1000, seed=4, day=0, newest=0.15)
    first = ran(run(tmp_path), "train")
    land(tmp_path, "b.csv", 100, seed=5, day=11, newest=1.0)
    result = run(tmp_path)
    second = ran(result, "train")
    decision = ran(result, "promote")["decision"]
    assert decision["champion_version"] == first["version"]

    from driftloop.promotion.gate import holdout_records, rescore

    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    holdout = pl.read_parquet(
        tmp_path / "data" / "models" / second["run_key"][:16] / "holdout.parquet"
    )
    with StateDB(layout.state_db) as db:
        records = holdout_records(layout, db, holdout)
    folder = package(tmp_path, registry, first["version"])
    fair = rescore(Predictor(folder, evaluation=True), records, spec)["rmse"]
    seen = rescore(Predictor(folder), records, spec)["rmse"]
    assert decision["champion_score"] == pytest.approx(fair, abs=1e-12)
    assert seen < fair / 3  # what the gate would have compared without this care
    # The challenger, which learned NEW from its training rows, beats the blind champion.
    assert decision["decision"] == "promoted", decision


def test_init_leaves_the_year_out_and_a_user_may_ask_for_it(tmp_path: Path) -> None:
    """A time split puts the holdout's year outside the training range every time, so
    ``init`` proposes no ``year`` part; written in by hand, it is still computed."""
    from driftloop.core.spec import parse_spec, read_yaml
    from driftloop.features.compute import build_features
    from driftloop.init import init_from_file

    rows = 200
    days = [f"2023-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:00:00" for i in range(rows)]
    sample = tmp_path / "sample.csv"
    pl.DataFrame(
        {"ts": days, "x": np.arange(rows) * 1.5, "y": np.arange(rows) % 7 * 2.0}
    ).write_csv(sample)
    project = tmp_path / "p"
    init_from_file(project, sample, "y", time_column="ts")
    spec = load_spec(project)
    assert spec.features.datetime_parts == {"ts": ("month", "weekday", "hour")}
    text = (project / "driftloop.yaml").read_text()
    assert "no year" in text  # the spec says why, where the user would add it

    data = read_yaml((project / "driftloop.yaml").read_text())
    data["features"]["datetime_parts"] = {"ts": ["year", "month"]}
    chosen = parse_spec(data)
    frame = pl.DataFrame({"ts": ["2024-03-01 10:00:00"], "x": [1.0], "y": [2.0]}).with_columns(
        pl.col("ts").str.to_datetime()
    )
    built = build_features(frame.lazy(), chosen).collect()
    assert built.get_column("ts_year").to_list() == [2024]
    assert built.get_column("ts_month").to_list() == [3]


def test_decay_tolerance_is_relative_for_errors_and_absolute_for_bounded_metrics() -> None:
    """0.05 of RMSE means 5% of the holdout's RMSE (an RMSE of 100 rentals per hour decays
    past 105, not past 100.05); 0.05 of R^2 or accuracy means 0.05. Stated in the report."""
    import datetime as dt

    from driftloop.core.spec import MonitoringSpec, PerformanceMonitoring, parse_spec
    from driftloop.monitoring.drift import data_drift
    from driftloop.monitoring.html import render
    from driftloop.monitoring.performance import (
        Outcomes,
        decay_bound,
        realized_performance,
        tolerance_kind,
    )
    from driftloop.monitoring.reference import Reference
    from driftloop.monitoring.report import build_report

    assert tolerance_kind("rmse") == tolerance_kind("mae") == tolerance_kind("log_loss")
    assert tolerance_kind("rmse") == "relative"
    for bounded in ("roc_auc", "accuracy", "f1", "average_precision", "r2"):
        assert tolerance_kind(bounded) == "absolute"
    assert decay_bound("rmse", 100.0, 0.05) == pytest.approx(105.0)
    assert decay_bound("mae", 40.0, 0.1) == pytest.approx(44.0)
    assert decay_bound("r2", 0.8, 0.05) == pytest.approx(0.75)
    assert decay_bound("accuracy", 0.9, 0.05) == pytest.approx(0.85)

    rng = np.random.default_rng(11)
    n = 20_000
    truth = rng.normal(500, 200, n)

    def outcomes(rmse: float) -> Outcomes:
        pred = truth + rng.normal(0, rmse, n)
        return Outcomes(truth, pred, None, None, np.arange(n) // 5_000, ["w0", "w1", "w2", "w3"])

    settings = PerformanceMonitoring(tolerance=0.05, bootstrap=100)
    slightly = realized_performance("rmse", outcomes(102.0), 100.0, settings, rng)
    assert not slightly["degraded"]  # 2% worse: within 5% (an absolute 0.05 called it decay)
    assert slightly["overall"]["low"] > 100.05
    worse = realized_performance("rmse", outcomes(115.0), 100.0, settings, rng)
    assert worse["degraded"] and worse["overall"]["low"] > 105
    assert worse["tolerance_kind"] == "relative"
    assert worse["decay_bound"] == pytest.approx(105.0)

    base = {
        "name": "p",
        "task": "regression",
        "target": "y",
        "sources": [{"name": "s", "path": "data/raw/s/*.csv"}],
        "contract": {"columns": {"y": {"dtype": "float"}, "x": {"dtype": "float"}}},
    }
    frame = pl.DataFrame({"x": rng.normal(size=500)})
    reference = Reference.from_frame(frame)
    report = build_report(
        spec=parse_spec(base),
        champion_version="1",
        reference=reference,
        current={"kind": "batch", "path": "b.csv", "rows": 500},
        drift=data_drift(reference, frame, MonitoringSpec()),
        target=None,
        prediction=None,
        realized=worse,
        estimated=None,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        timings={"total_s": 0.1},
    )
    assert report["performance"]["tolerance_kind"] == "relative"
    [message] = [m for m in report["summary"]["messages"] if "degraded" in m]
    assert "tolerance relative, 0.05 = 5.0% of the holdout's rmse" in message
    html = render(report)
    assert "tolerance relative, 0.05 = 5.0% of the holdout&#x27;s rmse: decayed above 105" in html
