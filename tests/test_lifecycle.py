"""The promotion gate, aliases, audit and rollback, on small synthetic data (fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftloop import registry
from driftloop.errors import SpecError
from driftloop.layout import Layout
from driftloop.pipeline import run
from driftloop.spec import load_spec, parse_spec, read_yaml

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


def train_report(result: object) -> dict[str, object]:
    [report] = [r for r in result.reports if r.stage == "train"]  # type: ignore[attr-defined]
    assert report.outcome == "ran", report.error
    manifest: dict[str, object] = report.manifest
    return manifest


CRIPPLED = "model: {params: {max_iter: 1, max_depth: 1, learning_rate: 0.01}}\n"


def test_gate_promotes_better_rejects_worse_and_rollback_restores(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + CRIPPLED)
    land(tmp_path, "a.csv", 800, seed=1)
    first = train_report(run(tmp_path))
    assert first["decision"]["decision"] == "promoted"  # type: ignore[index]
    assert "first model" in first["decision"]["reason"]  # type: ignore[index]
    layout = Layout(tmp_path)
    spec = load_spec(tmp_path)
    assert registry.alias_version(spec, layout, "champion") == "1"

    write_spec(tmp_path, SPEC)  # a real model now: better on the same holdout
    better = train_report(run(tmp_path))
    decision = better["decision"]
    assert decision["decision"] == "promoted", decision  # type: ignore[index]
    assert decision["champion_version"] == "1"  # type: ignore[index]
    assert decision["challenger_score"] > decision["champion_score"]  # type: ignore[index,operator]
    assert registry.alias_version(spec, layout, "champion") == "2"

    write_spec(tmp_path, SPEC + CRIPPLED.replace("max_iter: 1", "max_iter: 2"))
    worse = train_report(run(tmp_path))
    decision = worse["decision"]
    assert decision["decision"] == "rejected"  # type: ignore[index]
    assert "vs champion" in decision["reason"]  # type: ignore[index]
    assert registry.alias_version(spec, layout, "champion") == "2"  # unchanged
    assert registry.alias_version(spec, layout, "challenger") == "3"

    cli = [sys.executable, "-m", "driftloop.cli"]
    out = subprocess.run(
        [
            *cli,
            "models",
            "-p",
            str(tmp_path),
            "rollback",
            "--reason",
            "v2 misbehaves",
            "--by",
            "ana",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert registry.alias_version(spec, layout, "champion") == "1"
    listed = subprocess.run(
        [*cli, "models", "-p", str(tmp_path), "--json"], capture_output=True, text=True, check=True
    )
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
    # A manual promotion names who and why; an unknown version is a clear error.
    bad = subprocess.run(
        [*cli, "models", "-p", str(tmp_path), "promote", "9"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "has no version 9" in bad.stderr


def test_a_second_run_registers_nothing_new(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", 400, seed=2)
    train_report(run(tmp_path))
    again = [r for r in run(tmp_path).reports if r.stage == "train"]
    assert [r.outcome for r in again] == ["cached"]


def test_the_same_data_and_seed_give_the_same_metrics(tmp_path: Path) -> None:
    metrics = []
    for name in ("a", "b"):
        project = tmp_path / name
        write_spec(project, SPEC)
        land(project, "a.csv", 500, seed=3)
        metrics.append(train_report(run(project))["metrics"])
    assert metrics[0] == metrics[1]


def test_too_few_rows_for_a_holdout_fail_before_training(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", 30, seed=4)
    [report] = [r for r in run(tmp_path).reports if r.stage == "train"]
    assert report.outcome == "failed"
    assert "too few rows for a holdout: 30 labelled rows, need 64" in (report.error or "")
    assert not (tmp_path / "mlflow.db").exists()  # nothing was registered
    # More data is a new training key: it trains then.
    land(tmp_path, "b.csv", 200, seed=5, start_day=5)
    [report] = [r for r in run(tmp_path).reports if r.stage == "train"]
    assert report.outcome == "ran"


def test_a_constant_target_fails_with_a_clear_error(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
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


def test_target_missing_from_the_data_fails_before_training(tmp_path: Path) -> None:
    write_spec(
        tmp_path,
        SPEC.replace("nullable: false}\nsources", "nullable: false}\nsources")
        + "features: {exclude: []}\n",
    )
    land(tmp_path, "a.csv", 300, seed=6)
    path = tmp_path / "data/raw/s/a.csv"
    pl.read_csv(path).drop("y").write_csv(path)
    result = run(tmp_path)
    assert result.failed  # the file lacks the target column: quarantined, so no rows
    assert "missing column(s) ['y']" in (result.failed[0].error or "")
