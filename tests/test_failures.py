"""Failures that stay visible: ``run`` exits 1 while a failed batch is unresolved,
``driftloop batches`` lists, retries and dismisses (who and why recorded), a batch over the
quarantine limit prints its top reasons, and an undefined holdout metric is never promoted
silently."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.core.events import FailureDismissed, RetryRequested, parse
from driftloop.core.layout import Layout
from driftloop.core.spec import parse_spec, read_yaml
from driftloop.core.state import StateDB
from driftloop.models.registry import CHAMPION
from driftloop.pipeline import run
from driftloop.promotion.gate import decide
from driftloop.testing import InMemoryRegistry, forget, memory_store

from .test_lifecycle import SPEC, land, write_memory_spec

BAD_SPEC = (
    "name: t\ntask: regression\ntarget: y\nsources: [{name: s, path: data/raw/s/*.csv}]\n"
    "contract: {columns: {y: {dtype: float, min: 0}, x: {dtype: float}}}\n"
    "ingest: {settle_seconds: 0}\nmodel: {enabled: false}\n"
)


def invoke(*args: str) -> tuple[int, str, str]:
    out = CliRunner().invoke(app, list(args))
    return out.exit_code, out.stdout, out.stderr


def failing_project(project: Path) -> str:
    """A project whose only batch breaks the quarantine limit; returns the batch id."""
    (project / "driftloop.yaml").write_text(BAD_SPEC)
    (project / "data/raw/s").mkdir(parents=True)
    (project / "data/raw/s/a.csv").write_text("y,x\n-1,1\n-2,2\n3,3\n-4.5,4\n")
    code, out, _ = invoke("run", "-p", str(project))
    assert code == 1 and "FAILED prep" in out, out
    with StateDB(Layout(project).state_db) as db:
        [batch] = db.batches()
    return batch.batch_id


def test_run_exits_1_while_a_failure_is_unresolved_and_0_once_dismissed(tmp_path: Path) -> None:
    batch = failing_project(tmp_path)
    for _ in range(2):  # not only the first time: every run, until someone acts
        code, out, _ = invoke("run", "-p", str(tmp_path))
        assert code == 1, out
        assert "(earlier run; unchanged since)" in out and "1 unresolved failure(s)" in out

    code, out, _ = invoke("batches", "-p", str(tmp_path))
    assert code == 0, out
    assert "1 batch(es); 1 unresolved failure(s), 0 dismissed" in out
    assert f"FAILED prep {batch}" in out and "max_bad_share" in out
    assert "column 'y' breaks greater_than_or_equal_to(0.0) (e.g. '-1')" in out

    code, _, err = invoke("batches", "-p", str(tmp_path), "dismiss", batch, "--reason", " ")
    assert code == 2 and "needs a reason" in err
    code, _, err = invoke("batches", "-p", str(tmp_path), "dismiss", batch[:-1], "--reason", "x")
    assert code == 2 and "there is no batch" in err and "did you mean" in err
    code, out, _ = invoke(
        "batches",
        "-p",
        str(tmp_path),
        "dismiss",
        batch,
        "--reason",
        "sensor test file",
        "--by",
        "ana",
    )
    assert code == 0 and f"prep {batch}: dismissed by ana: sensor test file" in out

    code, out, _ = invoke("run", "-p", str(tmp_path))
    assert code == 0, out
    assert "FAILED" not in out
    listed = json.loads(invoke("batches", "-p", str(tmp_path), "--json")[1])
    assert listed["unresolved"] == []
    [gone] = listed["dismissed"]
    assert gone["batch_id"] == batch and gone["stage"] == "prep"
    assert gone["dismissed"]["by"] == "ana" and gone["dismissed"]["reason"] == "sensor test file"
    with StateDB(Layout(tmp_path).state_db) as db:
        event = parse(db.last_event("FailureDismissed") or {})
    assert isinstance(event, FailureDismissed)
    assert (event.batch_id, event.actor, event.reason) == (batch, "ana", "sensor test file")
    assert "max_bad_share" in (event.error or "")
    # nothing left to dismiss
    code, _, err = invoke("batches", "-p", str(tmp_path), "dismiss", batch, "--reason", "again")
    assert code == 2 and "no unresolved stage run" in err
    # the pass settled with the batch left out; a retry is a change it sees
    code, out, _ = invoke("run", "-p", str(tmp_path))
    assert code == 0 and "nothing to do" in out
    code, out, _ = invoke("batches", "-p", str(tmp_path), "retry", batch)
    assert code == 0, out
    code, out, _ = invoke("run", "-p", str(tmp_path))
    assert code == 1 and f"FAILED prep {batch}: batch" in out


def test_retry_runs_a_failed_call_again_and_a_fix_resolves_it(tmp_path: Path) -> None:
    batch = failing_project(tmp_path)
    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        [failure] = db.failures()
    assert failure["attempts"] == 1
    code, out, _ = invoke("batches", "-p", str(tmp_path), "retry", batch, "--by", "bo")
    assert code == 0 and "runs again on the next pass (asked by bo)" in out
    code, out, _ = invoke("run", "-p", str(tmp_path))
    assert code == 1 and f"FAILED prep {batch}: batch" in out  # ran again (not "earlier run")
    assert "(earlier run" not in out
    with StateDB(layout.state_db) as db:
        [again] = db.failures()
        assert again["key"] == failure["key"] and again["attempts"] == 1  # a fresh count
        assert isinstance(parse(db.last_event("RetryRequested") or {}), RetryRequested)
    # A fix of the spec gives the batch a new key: it runs, and the failure is gone.
    (tmp_path / "driftloop.yaml").write_text(BAD_SPEC.replace("min: 0", "min: -10"))
    code, out, _ = invoke("run", "-p", str(tmp_path))
    assert code == 0, out
    with StateDB(layout.state_db) as db:
        assert db.failures() == []


def test_a_dismissed_batch_no_longer_blocks_training(tmp_path: Path) -> None:
    """The loop goes on without a dismissed batch: the next good batch trains a model."""
    registry = memory_store("synth")
    try:
        write_memory_spec(tmp_path, registry, quarantine={"max_bad_share": 0.1})
        land(tmp_path, "a.csv", 300, seed=1)
        (tmp_path / "data/raw/s/a.csv").write_text(
            (tmp_path / "data/raw/s/a.csv").read_text().replace(",yes\n", ",maybe\n")
        )
        first = run(tmp_path)
        assert [r.outcome for r in first.unresolved] == ["failed"]
        [batch] = {r.batch_id for r in first.unresolved}
        land(tmp_path, "b.csv", 400, seed=2, start_day=5)
        blocked = run(tmp_path)
        assert not any(r.stage == "train" for r in blocked.reports)  # the failed batch blocks
        code, _, _ = invoke("batches", "-p", str(tmp_path), "dismiss", batch, "--reason", "bad")
        assert code == 0
        after = run(tmp_path)
        assert not after.unresolved
        [train] = [r for r in after.reports if r.stage == "train"]
        assert train.outcome == "ran", train.error
        assert batch not in {m["batch_id"] for m in train.manifest["inputs"]}
        assert registry.alias(CHAMPION) == "1"
    finally:
        forget(registry.uri)


@pytest.mark.parametrize(
    ("challenger", "baseline", "champion", "words"),
    [
        (math.nan, 0.5, None, "the challenger's roc_auc is undefined (NaN)"),
        (math.nan, 0.5, 0.7, "the challenger's roc_auc is undefined (NaN)"),
        (math.nan, 0.5, math.nan, "the challenger's roc_auc is undefined (NaN)"),
        (0.7, math.nan, None, "the naive baseline's roc_auc is undefined (NaN)"),
    ],
)
def test_an_undefined_metric_is_never_promoted(
    challenger: float, baseline: float, champion: float | None, words: str
) -> None:
    spec = parse_spec(read_yaml(SPEC + "model: {metric: roc_auc}\n"))
    decision = decide(spec, challenger, baseline, champion)
    assert not decision.promote
    assert words in decision.reason


@pytest.fixture
def registry() -> Iterator[InMemoryRegistry]:
    found = memory_store("synth")
    yield found
    forget(found.uri)


def test_a_challenger_with_an_undefined_holdout_metric_needs_force(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """A holdout of one class has no roc_auc: the gate rejects the version with the
    challenger's problem as the reason, and a manual promotion needs --force (recorded)."""
    write_memory_spec(tmp_path, registry, model={"metric": "roc_auc"})
    land(tmp_path, "a.csv", 400, seed=1)
    path = tmp_path / "data/raw/s/a.csv"
    frame = pl.read_csv(path)
    late = np.arange(frame.height) >= frame.height * 0.6  # the newest rows: the holdout
    frame.with_columns(
        pl.when(pl.Series(late)).then(pl.lit("yes")).otherwise(pl.col("y")).alias("y")
    ).write_csv(path)
    result = run(tmp_path)
    [promote] = [r for r in result.reports if r.stage == "promote"]
    assert promote.outcome == "ran", promote.error
    decision = promote.manifest["decision"]
    assert decision["decision"] == "rejected"
    assert "the challenger's roc_auc is undefined (NaN)" in decision["reason"]
    assert registry.alias(CHAMPION) is None

    code, _, err = invoke("models", "-p", str(tmp_path), "promote", "1")
    assert code == 2
    assert "v1: its holdout roc_auc was not recorded" in err and "--force" in err
    assert registry.alias(CHAMPION) is None
    code, out, _ = invoke(
        "models", "-p", str(tmp_path), "promote", "1", "--force", "--reason", "try it", "--by", "bo"
    )
    assert code == 0, out
    assert registry.alias(CHAMPION) == "1"
    with StateDB(Layout(tmp_path).state_db) as db:
        last = db.decisions("synth")[-1]
    assert last["actor"] == "bo" and last["decision"] == "manual"
    assert last["reason"] == "try it (forced: its holdout roc_auc was not recorded)"
