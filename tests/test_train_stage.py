"""The train stage without the overhead (issue 17, target 2): the holdout is scored once, the
compiled path is built beside registration, and each part's time is in the manifest.

What moved out of the way must still happen: the compiled path is kept, the permutation
importance reaches the monitoring reference, and the reused holdout outputs are exactly what
scoring the holdout again gives.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec, parse_spec
from driftloop.models import cache as model_cache
from driftloop.models import inference
from driftloop.models.package import Predictor
from driftloop.pipeline import run
from driftloop.testing import InMemoryRegistry, forget, memory_store
from driftloop.train import stage as train_stage
from driftloop.train.fit import fit

from .helpers import write_spec

SPEC = """
name: trainparts
task: classification
target: y
time_column: t
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    t: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    x: {dtype: float}
    z: {dtype: float}
    c: {dtype: str}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
ingest: {settle_seconds: 0}
"""

# every part the stage times (the compile runs in a thread; compile_wait is the join)
PARTS = {
    "read",
    "fit",
    "profile",
    "importance",
    "reference",
    "package",
    "register",
    "cache",
    "compile",
    "compile_wait",
    "total_s",
}


def table(rows: int, seed: int) -> pl.DataFrame:
    """``y`` depends on ``x`` and on ``c``; ``z`` is noise."""
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=rows), rng.normal(size=rows)
    c = rng.choice(["a", "b", "c"], rows)
    logit = 2 * x + (c == "a") * 1.5
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    t = [f"2024-01-{1 + i * 20 // rows:02d} {i % 24:02d}:{i % 60:02d}:00" for i in range(rows)]
    return pl.DataFrame({"t": t, "x": x.round(4), "z": z.round(4), "c": c, "y": y})


@pytest.fixture
def registry() -> Iterator[InMemoryRegistry]:
    found = memory_store("trainparts")
    yield found
    forget(found.uri)


def project(folder: Path, registry: InMemoryRegistry, rows: int = 600) -> Path:
    data = yaml.safe_load(SPEC)
    data["model"] = {"tracking_uri": registry.uri}
    write_spec(folder, yaml.safe_dump(data, sort_keys=False))
    raw = folder / "data" / "raw" / "s"
    raw.mkdir(parents=True, exist_ok=True)
    table(rows, seed=1).write_csv(raw / "a.csv")
    return folder


def trained_manifest(folder: Path) -> dict[str, Any]:
    result = run(folder)
    [report] = [r for r in result.reports if r.stage == "train"]
    assert report.outcome == "ran", report.error
    manifest: dict[str, Any] = report.manifest
    return manifest


def features(rows: int = 1500) -> tuple[pl.DataFrame, Any]:
    """A features-like frame (lineage columns included) and its spec, without a project."""
    spec = parse_spec(yaml.safe_load(SPEC))
    frame = table(rows, seed=2).with_columns(
        pl.col("t").str.to_datetime("%Y-%m-%d %H:%M:%S"),
        pl.lit(1).alias("__batch_seq"),
        pl.lit("a.csv").alias("__file"),
        pl.int_range(rows).alias("__row"),
    )
    return frame, spec


def test_the_holdout_outputs_fit_keeps_are_a_fresh_scoring_of_the_evaluated_model() -> None:
    frame, spec = features()
    trained = fit(frame, spec)
    assert trained.refit and trained.holdout_outputs is not None
    fresh = dataclasses.replace(trained, holdout_outputs=None)  # the stage then scores again
    kept = train_stage._holdout_outputs(trained)
    again = train_stage._holdout_outputs(fresh)
    assert list(kept[1]) == list(again[1])  # labels
    # labels taken from the probabilities are the estimator's own predict
    assert list(kept[1]) == list(trained.evaluated.predict(kept[0]))
    np.testing.assert_array_equal(kept[2], again[2])  # probabilities, bit for bit
    assert train_stage._holdout_predictions(trained, spec).equals(
        train_stage._holdout_predictions(fresh, spec)
    )
    # and they are the evaluated model's (fitted without the holdout), not the served one's
    served = trained.pipeline.predict_proba(kept[0])
    assert not np.array_equal(served, kept[2])
    parts: dict[str, float] = {}
    predictions = train_stage._holdout_predictions(trained, spec)
    one = train_stage._monitoring_reference(trained, spec, predictions, parts)
    two = train_stage._monitoring_reference(fresh, spec, predictions, {})
    for name, reference in one.items():
        assert reference.equals(two[name]), name
    assert {"importance", "reference"} <= parts.keys()


def test_the_manifest_times_each_part_and_the_compiled_path_is_kept(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    manifest = trained_manifest(project(tmp_path, registry))
    timings = manifest["timings"]
    assert set(timings) == PARTS
    assert all(v >= 0 for v in timings.values())
    in_turn = sum(v for k, v in timings.items() if k not in {"total_s", "compile"})
    assert in_turn <= timings["total_s"]  # the compile overlaps registration: not summed
    # The compiled path, built beside registration, is kept with the cached version and
    # is the served model.
    entry = model_cache.fetch(registry, Layout(tmp_path), manifest["version"])
    verdict = inference.load(entry / model_cache.COMPILED)
    assert verdict is not None and verdict.compiled is not None, "no compiled path was kept"
    served = Predictor(entry / model_cache.PACKAGE)
    rows = served.features(table(50, seed=9).drop("y"))
    compiled_labels, compiled_proba = verdict.compiled.predict_features(rows)
    labels, proba = served.predict_features(rows)
    np.testing.assert_allclose(compiled_proba, proba, atol=1e-6)
    assert list(compiled_labels) == list(labels)
    # The permutation importance reached the monitoring reference: x matters, z does not.
    reference = pl.read_parquet(entry / model_cache.PACKAGE / "reference_columns.parquet")
    importance = dict(
        reference.filter(pl.col("role") == "feature").select("column", "importance").iter_rows()
    )
    assert importance["x"] > importance["z"] >= 0
    assert load_spec(tmp_path).model.estimator == "hist_gradient_boosting"


def test_a_compiled_path_that_fails_in_its_thread_is_logged_and_the_version_still_trains(
    tmp_path: Path,
    registry: InMemoryRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("treelite refused the forest")

    monkeypatch.setattr(inference, "compile_package", broken)
    with caplog.at_level(logging.WARNING, logger="driftloop.train.stage"):
        manifest = trained_manifest(project(tmp_path, registry))
    assert any(
        "compiling" in r.getMessage() and "treelite refused the forest" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    entry = model_cache.fetch(registry, Layout(tmp_path), manifest["version"])
    assert (entry / model_cache.PACKAGE).is_dir()
    assert not (entry / model_cache.COMPILED).exists()  # scikit-learn serves it


@pytest.mark.parametrize(
    ("estimator", "task", "shortcut"),
    [
        ("hist_gradient_boosting", "classification", True),
        ("random_forest", "classification", True),
        ("hist_gradient_boosting", "regression", True),
        ("logistic_regression", "classification", False),  # one-hot: the whole pipeline
    ],
)
def test_importance_on_rows_prepared_once_is_the_whole_pipelines(
    estimator: str, task: str, shortcut: bool
) -> None:
    """The tree pipelines' rows are prepared once and the estimator alone is scored on the
    shuffled columns; the numbers are scikit-learn's on the whole pipeline, bit for bit."""
    from sklearn.inspection import permutation_importance

    frame, spec = features(1200)
    frame = frame.with_columns(  # nulls in a number and in a category
        pl.when(pl.col("__row") % 7 == 0).then(None).otherwise(pl.col("x")).alias("x"),
        pl.when(pl.col("__row") % 11 == 0).then(None).otherwise(pl.col("c")).alias("c"),
    )
    if task == "regression":
        frame = frame.with_columns((pl.col("x").fill_null(0) * 3 + pl.col("z")).alias("y"))
    data = yaml.safe_load(SPEC) | {"task": task}
    if task == "regression":
        data["contract"]["columns"]["y"] = {"dtype": "float", "nullable": False}
    data["model"] = {"estimator": estimator, "params": {"max_iter": 30}}
    if estimator == "random_forest":
        data["model"]["params"] = {"n_estimators": 20}
    spec = parse_spec(data)
    trained = fit(frame, spec)
    x, _, _ = train_stage._holdout_outputs(trained)
    labels = trained.split.holdout.get_column("y")
    prepared = train_stage._prepared_once(trained.evaluated, x, trained.inputs)
    assert (prepared is not None) is shortcut
    found = train_stage._permutation_importance(trained, x, labels, spec)
    rows = min(train_stage.IMPORTANCE_ROWS, len(labels))
    y = labels.cast(pl.String if trained.classes else pl.Float64).to_numpy()[:rows]
    whole = permutation_importance(
        trained.evaluated, x.iloc[:rows], y, n_repeats=2, random_state=spec.model.seed, n_jobs=1
    )
    expected = {
        c: max(0.0, float(v)) for c, v in zip(trained.inputs, whole.importances_mean, strict=True)
    }
    assert found == expected
    assert found["x"] > 0
