"""The promotion gate, aliases, audit and rollback, on small synthetic data (fast).

The gate, promote, rollback and repair tests run on the in-memory registry
(``driftloop.testing``); the tests at the end are the MLflow tier: the same lifecycle
through the real CLI on an embedded MLflow store, and where the store comes from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.core.errors import RegistryError, RegistryUnavailableError, SpecError
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec, parse_spec, read_yaml
from driftloop.core.state import StateDB
from driftloop.models import cache as model_cache
from driftloop.models.package import Predictor
from driftloop.models.registry import CHALLENGER, CHAMPION, open_registry
from driftloop.pipeline import run, run_stage
from driftloop.promotion.gate import decide
from driftloop.testing import InMemoryRegistry, forget, memory_store

from .helpers import write_spec

SPEC = """
name: synth
task: classification
target: y
time_column: t
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    t: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    x1: {dtype: float}
    x2: {dtype: float}
    c: {dtype: str}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
ingest: {settle_seconds: 0}
"""


def land(project: Path, name: str, rows: int, seed: int, start_day: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    c = rng.choice(["a", "b", "c"], rows)
    logit = 1.5 * x1 - x2 + (c == "a") * 1.0
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    t = [f"2024-01-{1 + start_day + i * 20 // rows:02d} 10:{i % 60:02d}:00" for i in range(rows)]
    frame = pl.DataFrame({"t": t, "x1": x1.round(4), "x2": x2.round(4), "c": c, "y": y})
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_csv(folder / name)


def report_of(result: Any, stage: str) -> dict[str, Any]:
    """The manifest of the one ``stage`` run this pass ran (not a cache hit)."""
    [report] = [r for r in result.reports if r.stage == stage]
    assert report.outcome == "ran", report.error
    manifest: dict[str, Any] = report.manifest
    return manifest


def train_report(result: Any) -> dict[str, Any]:
    return report_of(result, "train")


def decision_of(result: Any) -> dict[str, Any]:
    """The promote stage's decision in this pass, which came right after the training."""
    stages = [r.stage for r in result.reports if r.outcome == "ran"]
    assert "train" in stages and stages[stages.index("train") + 1] == "promote", stages
    decision: dict[str, Any] = report_of(result, "promote")["decision"]
    return decision


CRIPPLED = {"params": {"max_iter": 1, "max_depth": 1, "learning_rate": 0.01}}


@pytest.fixture
def registry() -> Iterator[InMemoryRegistry]:
    """An in-memory registry of the model 'synth', found by its URI in the spec."""
    found = memory_store("synth")
    yield found
    forget(found.uri)


def write_memory_spec(
    project: Path, registry: InMemoryRegistry, *, model: dict[str, Any] | None = None, **extra: Any
) -> None:
    """SPEC with its registry in memory, plus ``model`` settings and other sections."""
    data = yaml.safe_load(SPEC)
    data["model"] = {**(model or {}), "tracking_uri": registry.uri}
    data.update(extra)
    write_spec(project, yaml.safe_dump(data, sort_keys=False))


def test_gate_promotes_better_rejects_worse_and_rollback_restores(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    write_memory_spec(tmp_path, registry, model=CRIPPLED)
    land(tmp_path, "a.csv", 800, seed=1)
    first = decision_of(run(tmp_path))
    assert first["decision"] == "promoted"
    assert "first model" in first["reason"]
    assert registry.alias(CHAMPION) == "1"

    write_memory_spec(tmp_path, registry)  # a real model now: better on the same holdout
    decision = decision_of(run(tmp_path))
    assert decision["decision"] == "promoted", decision
    assert decision["champion_version"] == "1"
    assert decision["challenger_score"] > decision["champion_score"]
    assert registry.alias(CHAMPION) == "2"

    worse = {"params": {**CRIPPLED["params"], "max_iter": 2}}
    write_memory_spec(tmp_path, registry, model=worse)
    decision = decision_of(run(tmp_path))
    assert decision["decision"] == "rejected"
    assert "vs champion" in decision["reason"]
    assert registry.alias(CHAMPION) == "2"  # unchanged
    assert registry.alias(CHALLENGER) == "3"

    cli = CliRunner()
    out = cli.invoke(
        app, ["models", "-p", str(tmp_path), "rollback", "--reason", "v2 misbehaves", "--by", "ana"]
    )
    assert out.exit_code == 0, out.output
    assert registry.alias(CHAMPION) == "1"
    listed = cli.invoke(app, ["models", "-p", str(tmp_path), "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    history = [(d["version"], d["decision"], d["actor"]) for d in data["decisions"]]
    assert history == [
        ("1", "promoted", "driftloop (promotion gate)"),
        ("2", "promoted", "driftloop (promotion gate)"),
        ("3", "rejected", "driftloop (promotion gate)"),
        ("1", "rollback", "ana"),
    ]
    assert {v["version"]: v["aliases"] for v in data["versions"]} == {
        "3": ["challenger"],
        "2": [],
        "1": ["champion"],
    }
    tags = {v["version"]: v["tags"] for v in data["versions"]}
    assert tags["3"]["driftloop.decision"] == "rejected"
    assert tags["1"]["driftloop.decision"] == "rollback"
    # A manual promotion names who and why; an unknown version is a clear error.
    bad = cli.invoke(app, ["models", "-p", str(tmp_path), "promote", "9"])
    assert bad.exit_code == 2 and "has no version 9" in bad.stderr
    promoted = cli.invoke(app, ["models", "-p", str(tmp_path), "promote", "3", "--by", "bo"])
    assert promoted.exit_code == 0, promoted.output
    assert "champion of synth: v3 (was v1); manual by bo" in promoted.stdout
    assert registry.alias(CHAMPION) == "3"


def test_promote_decides_a_trained_version_once(tmp_path: Path, registry: InMemoryRegistry) -> None:
    """The train stage only registers; the promote stage decides on its output, once: a
    second call is a cache hit, and a call after a crash that lost its output (the decision
    recorded, the output not written) takes the recorded decision instead of deciding again."""
    import shutil

    from driftloop.train.stage import HOLDOUT, HOLDOUT_KEYS

    write_memory_spec(tmp_path, registry, model={"enabled": False})
    land(tmp_path, "a.csv", 400, seed=1)
    run(tmp_path)  # prep and features only
    write_memory_spec(tmp_path, registry)
    layout = Layout(tmp_path)
    nothing = run_stage(tmp_path, "promote")
    assert nothing.outcome == "skipped" and "no training" in str(nothing.error)
    trained = run_stage(tmp_path, "train")
    assert trained.outcome == "ran", trained
    with StateDB(layout.state_db) as db:
        assert "decision" not in trained.manifest
        assert registry.alias(CHALLENGER) == "1" and registry.alias(CHAMPION) is None
        holdout = pl.read_parquet(
            layout.root / "data" / "models" / trained.manifest["run_key"][:16] / HOLDOUT
        )
        assert holdout.columns == list(HOLDOUT_KEYS)
        assert holdout.height == trained.manifest["holdout_rows"]

        first = run_stage(tmp_path, "promote")
        assert first.outcome == "ran", first
        assert first.manifest["decision"]["decision"] == "promoted"
        assert registry.alias(CHAMPION) == "1"
        again = run_stage(tmp_path, "promote")
        assert again.outcome == "cached"

        shutil.rmtree(layout.promotions)  # the output lost, the recorded decision kept
        after = run_stage(tmp_path, "promote")
        assert after.outcome == "ran"
        assert after.manifest["decision"] == first.manifest["decision"]
        assert [d["version"] for d in db.decisions("synth")] == ["1"]
        assert registry.alias(CHAMPION) == "1"


def test_a_registry_that_does_not_answer_fails_promote_for_a_retry(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """A transient failure: the promote run fails as retryable (the training stands, nothing
    is decided), and the next pass decides."""
    write_memory_spec(tmp_path, registry, model={"enabled": False})
    land(tmp_path, "a.csv", 400, seed=1)
    run(tmp_path)  # prep and features only
    write_memory_spec(tmp_path, registry)
    layout = Layout(tmp_path)
    trained = run_stage(tmp_path, "train")
    assert trained.outcome == "ran", trained
    registry.down = True
    result = run(tmp_path)
    assert [r.stage for r in result.reports] == ["promote"]  # the training stands
    [promote] = result.reports
    assert promote.outcome == "failed"
    assert "did not answer" in (promote.error or "") and "tried again" in (promote.error or "")
    with StateDB(layout.state_db) as db:
        assert db.decisions("synth") == []
        assert db.run_info(db.last_succeeded("train")["key"])["status"] == "succeeded"  # type: ignore[index]
    registry.down = False
    [promote] = [r for r in run(tmp_path).reports if r.stage == "promote"]
    assert promote.outcome == "ran", promote.error
    assert promote.manifest["decision"]["decision"] == "promoted"
    assert registry.alias(CHAMPION) == "1"


def test_a_second_run_registers_nothing_new(tmp_path: Path, registry: InMemoryRegistry) -> None:
    write_memory_spec(tmp_path, registry)
    land(tmp_path, "a.csv", 400, seed=2)
    decision_of(run(tmp_path))
    again = [(r.stage, r.outcome) for r in run(tmp_path).reports if r.stage in ("train", "promote")]
    assert again == []  # the training and its decision are current: nothing to plan
    assert [v.version for v in registry.versions()] == ["1"]


def test_the_same_data_and_seed_give_the_same_metrics(tmp_path: Path) -> None:
    metrics = []
    for name in ("a", "b"):
        project = tmp_path / name
        registry = memory_store("synth")
        write_memory_spec(project, registry)
        land(project, "a.csv", 500, seed=3)
        metrics.append(train_report(run(project))["metrics"])
        forget(registry.uri)
    assert metrics[0] == metrics[1]


def test_too_few_rows_for_a_holdout_fail_before_training(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    write_memory_spec(tmp_path, registry)
    land(tmp_path, "a.csv", 30, seed=4)
    [report] = [r for r in run(tmp_path).reports if r.stage == "train"]
    assert report.outcome == "failed"
    assert "too few rows for a holdout: 30 labelled rows, need 64" in (report.error or "")
    assert registry.versions() == []  # nothing was registered
    # More data is a new training key: it trains then.
    land(tmp_path, "b.csv", 200, seed=5, start_day=5)
    [report] = [r for r in run(tmp_path).reports if r.stage == "train"]
    assert report.outcome == "ran"


def test_a_constant_target_fails_with_a_clear_error(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    write_memory_spec(tmp_path, registry)
    land(tmp_path, "a.csv", 300, seed=5)
    path = tmp_path / "data/raw/s/a.csv"
    frame = pl.read_csv(path).with_columns(pl.lit("no").alias("y"))
    frame.write_csv(path)
    [report] = [r for r in run(tmp_path).reports if r.stage == "train"]
    assert report.outcome == "failed"
    assert "single value" in (report.error or "")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("model: {estimator: xgboost}\n", "model.estimator"),
        ("model: {metric: rmse}\n", "model.metric 'rmse' does not fit task 'classification'"),
        ("model: {estimator: linear_regression}\n", "does not fit task 'classification'"),
        ("promotion: {metric: r2}\n", "promotion.metric 'r2' does not fit"),
        ("model: {window: {kind: last_rows}}\n", "needs a 'size'"),
        ("model: {holdout: {fraction: 1.5}}\n", "model.holdout.fraction"),
    ],
)
def test_bad_model_spec_values_fail_at_load(extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(read_yaml(SPEC + extra))


def test_target_missing_from_the_features_is_a_clear_error() -> None:
    from driftloop.core.errors import TrainError
    from driftloop.train.fit import fit

    spec = parse_spec(read_yaml(SPEC))
    frame = pl.DataFrame({"x1": [1.0, 2.0], "x2": [0.0, 1.0], "c": ["a", "b"]})
    with pytest.raises(TrainError, match="target 'y' is not in the features"):
        fit(frame, spec)


def test_bad_estimator_params_fail_before_any_work(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + "model: {params: {max_iter: -1}}\n")
    land(tmp_path, "a.csv", 300, seed=6)
    with pytest.raises(SpecError, match=r"model.params .* must be an int in the range"):
        run(tmp_path)
    assert not (tmp_path / ".driftloop").exists()  # nothing was ingested


def test_champion_is_rescored_on_the_new_holdout_from_raw_records(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """The champion's score in the gate is its score on the challenger's (newest) holdout,
    from the processed rows, not the figure it had when it was trained."""
    features = {"function": "feats:f"}
    write_memory_spec(tmp_path, registry, features=features)
    (tmp_path / "feats.py").write_text(
        "import polars as pl\ndef f(frame):\n    return {'x1': pl.col('x1') * 2}\n"
    )
    land(tmp_path, "a.csv", 600, seed=7)
    first = train_report(run(tmp_path))
    land(tmp_path, "b.csv", 600, seed=8, start_day=8)
    decision = decision_of(run(tmp_path))
    trained_score = first["metrics"]["roc_auc"]
    assert decision["champion_version"] == "1"
    assert decision["champion_score"] != trained_score
    # The same figure from the champion itself, on the raw records of the newest holdout:
    from driftloop.promotion.gate import holdout_records, rescore
    from driftloop.train.fit import fit
    from driftloop.train.stage import feature_batches, training_frame

    spec = load_spec(tmp_path)
    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        frame = training_frame(layout, feature_batches(layout, db))
        holdout = fit(frame, spec).split.holdout
        records = holdout_records(layout, db, holdout)
    # (the champion's model fitted without its own holdout: see tests/test_refit.py)
    folder = model_cache.fetch(registry, layout, "1") / model_cache.PACKAGE
    again = rescore(Predictor(folder, evaluation=True), records, spec)["roc_auc"]
    assert again == pytest.approx(decision["champion_score"], abs=1e-12)
    # An identical retrain (the user function transforms a raw column) scores exactly the
    # champion's figure, so it is not promoted: both were scored on the same inputs.
    write_memory_spec(tmp_path, registry, features=features, promotion={"min_improvement": 0.0001})
    third = decision_of(run(tmp_path))
    assert third["decision"] == "rejected", third
    assert third["challenger_score"] == pytest.approx(third["champion_score"], abs=1e-12)


def test_rollback_walks_the_history_back(tmp_path: Path, registry: InMemoryRegistry) -> None:
    from driftloop.promotion.alias import manual_alias_change

    write_memory_spec(tmp_path, registry)
    land(tmp_path, "a.csv", 300, seed=9)
    train_report(run(tmp_path))
    for min_improvement in (0.5, 0.6):  # two more versions, rejected by a strict gate
        write_memory_spec(tmp_path, registry, promotion={"min_improvement": min_improvement})
        assert decision_of(run(tmp_path))["decision"] == "rejected"
    spec = load_spec(tmp_path)
    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        for version in ("2", "3"):
            manual_alias_change(spec, layout, db, version=version, why="try", actor="t")
        walked = [
            manual_alias_change(spec, layout, db, version=None, why="back", actor="t")["version"]
            for _ in range(2)
        ]
        assert walked == ["2", "1"]
        with pytest.raises(RegistryError, match="no earlier champion to roll back to"):
            manual_alias_change(spec, layout, db, version=None, why="back", actor="t")
    assert registry.alias(CHAMPION) == "1"


def test_gradient_boosting_takes_a_text_column_with_many_values() -> None:
    from driftloop.train.fit import fit

    spec = parse_spec(read_yaml(SPEC))
    rng = np.random.default_rng(0)
    n = 2000
    frame = pl.DataFrame(
        {
            "t": [f"2024-01-01 00:{i % 60:02d}:00" for i in range(n)],
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "c": [f"city{i % 400}" for i in range(n)],  # more than 255 distinct values
            "y": rng.choice(["no", "yes"], n),
        }
    ).with_columns(pl.col("t").str.to_datetime())
    assert fit(frame, spec).metrics["roc_auc"] > 0


def test_a_time_split_keeps_rows_of_one_timestamp_together() -> None:
    from driftloop.train.fit import split_holdout

    spec = parse_spec(read_yaml(SPEC))
    days = [f"2024-01-{d:02d} 00:00:00" for d in range(1, 11) for _ in range(7)]
    frame = pl.DataFrame({"t": days}).with_columns(pl.col("t").str.to_datetime())
    split = split_holdout(frame, spec)
    assert split.kind == "time"
    assert split.train.get_column("t").max() < split.holdout.get_column("t").min()


def test_training_window_keeps_the_newest_rows() -> None:
    from driftloop.train.fit import training_window

    frame = pl.DataFrame(
        {"t": [f"2024-01-{d:02d} 00:00:00" for d in range(1, 31)], "y": ["no", "yes"] * 15}
    ).with_columns(pl.col("t").str.to_datetime())
    rows = parse_spec(read_yaml(SPEC + "model: {window: {kind: last_rows, size: 5}}\n"))
    assert training_window(frame, rows).get_column("t").dt.day().to_list() == [26, 27, 28, 29, 30]
    days = parse_spec(read_yaml(SPEC + "model: {window: {kind: last_days, size: 3}}\n"))
    assert training_window(frame, days).get_column("t").dt.day().to_list() == [28, 29, 30]


@pytest.mark.parametrize(
    ("metric", "challenger", "baseline", "champion", "promote", "words"),
    [
        ("roc_auc", 0.70, 0.50, None, True, "first model"),
        ("roc_auc", 0.45, 0.50, None, False, "does not beat the naive baseline"),
        ("roc_auc", 0.71, 0.50, 0.70, True, "beats champion"),
        ("roc_auc", 0.69, 0.50, 0.70, False, "vs champion"),
        ("rmse", 9.0, 20.0, 10.0, True, "beats champion"),  # lower is better
        ("rmse", 11.0, 20.0, 10.0, False, "vs champion"),
        ("rmse", 25.0, 20.0, None, False, "does not beat the naive baseline"),
        ("roc_auc", 0.71, 0.50, float("nan"), False, "could not be scored"),
    ],
)
def test_the_gate_decides_in_the_metrics_direction(
    metric: str,
    challenger: float,
    baseline: float,
    champion: float | None,
    promote: bool,
    words: str,
) -> None:
    task = "regression" if metric == "rmse" else "classification"
    text = SPEC.replace("task: classification", f"task: {task}").replace(
        'y: {dtype: str, allowed: ["no", "yes"], nullable: false}', "y: {dtype: float}"
    )
    spec = parse_spec(read_yaml(text + f"model: {{metric: {metric}}}\n"))
    decision = decide(spec, challenger, baseline, champion)
    assert decision.promote is promote
    assert words in decision.reason


def test_the_gate_can_skip_the_baseline_check() -> None:
    spec = parse_spec(read_yaml(SPEC + "promotion: {must_beat_baseline: false}\n"))
    decision = decide(spec, 0.45, 0.50, None)
    assert decision.promote and "does not beat (not required)" in decision.reason


def test_the_newest_recorded_decision_wins_and_a_refused_one_is_withdrawn(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """Decisions are recorded before the alias moves. A pass applies the newest one the
    registry missed (a crash in between), never an older one over a newer; a decision the
    registry refused is withdrawn, so no later pass applies what the user was told failed."""
    from driftloop.promotion.alias import apply_pending_decisions, manual_alias_change, move_alias

    write_memory_spec(tmp_path, registry)
    land(tmp_path, "a.csv", 400, seed=1)
    run(tmp_path)
    land(tmp_path, "b.csv", 400, seed=2, start_day=5)
    run(tmp_path)
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    base = {"model": "synth", "reason": "test", "metric": "roc_auc", "actor": "test"}
    with StateDB(layout.state_db) as db:
        champion = registry.alias(CHAMPION)
        other = "1" if champion == "2" else "2"
        # a crash after recording a promotion of `other`: the next pass applies it
        db.record_decision({**base, "version": other, "decision": "manual"}, applied=False)
        result = run(tmp_path)
        assert [d["version"] for d in result.applied] == [other]
        assert registry.alias(CHAMPION) == other
        assert db.last_event("ChampionMoved")["version"] == other  # type: ignore[index]
        # an old pending decision overtaken by a newer applied one is not applied
        old = db.record_decision({**base, "version": champion, "decision": "manual"}, applied=False)
        newer = db.record_decision({**base, "version": other, "decision": "manual"}, applied=False)
        db.mark_applied(newer)
        assert apply_pending_decisions(spec, layout, db) == []
        assert registry.alias(CHAMPION) == other
        assert next(d for d in db.decisions("synth") if d["id"] == old)["applied"] == 2
        # an unknown version is refused before anything is recorded
        with pytest.raises(RegistryError, match="has no version 9"):
            manual_alias_change(spec, layout, db, version="9", why="x", actor="t")
        assert db.unapplied("synth") == []
        # the registry refuses the move: the decision is withdrawn, the alias untouched
        refused = db.record_decision(
            {**base, "version": champion, "decision": "manual"}, applied=False
        )
        registry.down = True
        with pytest.raises(RegistryUnavailableError):
            move_alias(spec, layout, db, refused, str(champion))
        registry.down = False
        assert db.unapplied("synth") == []
        assert next(d for d in db.decisions("synth") if d["id"] == refused)["applied"] == -1
        assert apply_pending_decisions(spec, layout, db) == []
        assert registry.alias(CHAMPION) == other


# -- the MLflow tier: the real store, the real CLI in its own process ---------------------


def test_the_gate_and_a_rollback_on_mlflow_through_the_cli(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + "model: {params: {max_iter: 1, max_depth: 1}}\n")
    land(tmp_path, "a.csv", 600, seed=1)
    assert decision_of(run(tmp_path))["decision"] == "promoted"
    write_spec(tmp_path, SPEC)  # a real model now: better on the same holdout
    decision = decision_of(run(tmp_path))
    assert decision["decision"] == "promoted", decision
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    registry = open_registry(spec, layout)
    assert registry.uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert registry.alias(CHAMPION) == "2"

    cli = [sys.executable, "-m", "driftloop.cli", "models", "-p", str(tmp_path)]
    out = subprocess.run(
        [*cli, "rollback", "--reason", "v2 misbehaves", "--by", "ana"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert registry.alias(CHAMPION) == "1"
    listed = subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True)
    data = json.loads(listed.stdout)
    assert [(d["version"], d["decision"]) for d in data["decisions"]] == [
        ("1", "promoted"),
        ("2", "promoted"),
        ("1", "rollback"),
    ]
    assert {v["version"]: v["aliases"] for v in data["versions"]} == {
        "2": ["challenger"],
        "1": ["champion"],
    }
    assert data["versions"][0]["tags"]["driftloop.decision"] == "promoted"
    # what the served model learnt from, in MLflow's run and on the version (refit_on_all)
    assert data["versions"][0]["tags"]["driftloop.served_rows"] == "600"
    run_params = registry.client().get_run(data["versions"][0]["run_id"]).data.params
    assert run_params["served_rows"] == "600" and run_params["refit_on_all"] == "True"
    assert int(run_params["train_rows"]) + int(run_params["holdout_rows"]) == 600
    bad = subprocess.run([*cli, "promote", "9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "has no version 9" in bad.stderr


def test_a_tracking_uri_in_the_spec_is_used(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "registry.db"
    other.parent.mkdir()
    write_spec(tmp_path / "p", SPEC + f"model: {{tracking_uri: 'sqlite:///{other}'}}\n")
    land(tmp_path / "p", "a.csv", 300, seed=10)
    train_report(run(tmp_path / "p"))
    assert other.is_file()
    assert not (tmp_path / "p" / "mlflow.db").exists()


def test_mlflow_tracking_uri_from_the_environment_is_used(tmp_path: Path) -> None:
    other = tmp_path / "server-like.db"
    project = tmp_path / "p"
    write_spec(project, SPEC)
    land(project, "a.csv", 300, seed=11)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{other}"}
    out = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "run", "-p", str(project)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "PROMOTED" in out.stdout
    assert other.is_file() and not (project / "mlflow.db").exists()


def test_a_model_file_with_foreign_types_is_refused(tmp_path: Path) -> None:
    """The trust boundary: skops loads only scikit-learn, NumPy and SciPy types."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from driftloop.core.errors import RegistryError
    from driftloop.models.package import load_pipeline, save_pipeline

    path = tmp_path / "pipeline.skops"
    save_pipeline(Pipeline([("f", FunctionTransformer(os.getcwd))]), path)
    with pytest.raises(RegistryError, match="types outside scikit-learn/NumPy/SciPy"):
        load_pipeline(path)
    save_pipeline(Pipeline([("f", FunctionTransformer())]), path)
    assert load_pipeline(path) is not None


@pytest.mark.parametrize("name", ["eval", "exec", "getattr", "__import__"])
def test_a_model_file_calling_builtins_is_refused(tmp_path: Path, name: str) -> None:
    """``builtins`` is not trusted: a partial of ``builtins.eval`` (which skops stores as a
    function by name) would run code when the pipeline transforms."""
    import builtins
    from functools import partial

    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from driftloop.core.errors import RegistryError
    from driftloop.models.package import load_pipeline, save_pipeline

    path = tmp_path / "pipeline.skops"
    code = partial(getattr(builtins, name), "__import__('os').getcwd()")
    save_pipeline(Pipeline([("f", FunctionTransformer(code))]), path)
    with pytest.raises(RegistryError) as info:
        load_pipeline(path)
    assert f"'builtins.{name}'" in str(info.value)
    assert "types outside scikit-learn/NumPy/SciPy" in str(info.value)


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "random_forest"])
def test_an_encoder_that_needs_not_group_rare_values_codes_them_the_same(estimator: str) -> None:
    """With fewer than 255 values (null counted) a column has no rare values to group: the
    encoder built without grouping (which spares counting every value in Python) prepares the
    same codes, and the model predicts the same, bit for bit; from 255 on, grouping stays."""
    from driftloop.models.inputs import to_pandas_inputs
    from driftloop.train.fit import MAX_CODES, build_pipeline, groups_rare, model_inputs

    spec = parse_spec(read_yaml(SPEC + f"model: {{estimator: {estimator}}}\n"))
    rng = np.random.default_rng(3)
    n = 3000
    for cities, null_every in ((MAX_CODES - 2, 17), (MAX_CODES - 1, 0), (MAX_CODES, 0)):
        # every value once, then a long tail of rare ones
        c = [f"city{i}" for i in range(cities)]
        c += [f"city{i}" for i in rng.zipf(1.3, n - cities) % cities]
        if null_every:
            c = [None if i % null_every == 0 else v for i, v in enumerate(c)]
        frame = pl.DataFrame({"x1": rng.normal(size=n), "c": c, "y": rng.choice(["no", "yes"], n)})
        inputs, categorical = model_inputs(frame, spec)
        distinct = frame.get_column("c").n_unique()
        assert distinct == cities + (1 if null_every else 0)
        assert groups_rare(frame, categorical) is (distinct >= MAX_CODES)
        x, y = to_pandas_inputs(frame, inputs, categorical), frame.get_column("y").to_numpy()
        grouped = build_pipeline(spec, inputs, categorical).fit(x, y)
        plain = build_pipeline(spec, inputs, categorical, group_rare=False).fit(x, y)
        prepared = grouped.named_steps["prepare"].transform(x)
        if distinct < MAX_CODES:
            np.testing.assert_array_equal(prepared, plain.named_steps["prepare"].transform(x))
            np.testing.assert_array_equal(grouped.predict_proba(x), plain.predict_proba(x))
        else:  # the encoder still groups the rarest into one code
            cat = grouped.named_steps["prepare"].named_transformers_["cat"]
            encoder = cat.named_steps["encode"] if hasattr(cat, "named_steps") else cat
            assert encoder.infrequent_categories_[0] is not None
