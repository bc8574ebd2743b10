"""The per-stage entry points (``driftloop plan`` / ``driftloop stage`` and the Python API):
executing the plan one call at a time, as an orchestrator would, gives what a pass gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import driftloop
from driftloop.core import events
from driftloop.core.layout import Layout, read_manifest
from driftloop.core.state import StateDB

from .helpers import write_spec
from .test_ingest import SPEC, land

CLI = [sys.executable, "-m", "driftloop.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)


def test_the_plan_run_call_by_call_equals_a_pass(tmp_path: Path) -> None:
    by_calls, by_pass = tmp_path / "calls", tmp_path / "pass"
    for project in (by_calls, by_pass):
        write_spec(project, SPEC)
        land(project, "a.csv", [(1, 2), (3, 4)])
        land(project, "b.csv", [(5, 6)])
    ingested = driftloop.run_stage(by_calls, "ingest")
    assert ingested.outcome == "ran" and len(ingested.manifest["new_files"]) == 2
    calls = 0
    while (plan := driftloop.plan(by_calls)).waves:
        for wave in plan.waves:
            for call in wave:
                report = driftloop.run_stage(by_calls, call.stage, batch_id=call.batch_id)
                assert report.outcome == "ran", report.error
                calls += 1
    assert calls == 2  # prep and features of the one batch
    driftloop.run(by_pass)
    (batch,) = [p.name for p in (by_calls / "data/processed").iterdir()]
    for stage in ("processed", "features"):
        ours = read_manifest(by_calls / "data" / stage / batch)
        theirs = read_manifest(next((by_pass / "data" / stage).iterdir()))
        assert ours["run_key"] == theirs["run_key"]
    # a call made again is a cache hit, not a second run
    assert driftloop.run_stage(by_calls, "prep", batch_id=batch).outcome == "cached"
    assert driftloop.run(by_calls).reports == []


def test_the_cli_plans_runs_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2)])
    p = str(tmp_path)
    ingest = cli("stage", "ingest", "-p", p, "--json")
    assert ingest.returncode == 0, ingest.stderr
    batch = json.loads(ingest.stdout)["batch_id"]
    plan = cli("plan", "-p", p, "--json")
    assert json.loads(plan.stdout)["waves"] == [
        [{"stage": "prep", "batch_id": batch}],
        [{"stage": "features", "batch_id": batch}],
    ]
    shown = cli("plan", "-p", p)
    assert f"driftloop stage prep --batch {batch}" in shown.stdout
    prep = cli("stage", "prep", "-p", p, "--batch", batch)
    assert prep.returncode == 0 and f"prep {batch}: 1 rows in, 1 ok" in prep.stdout
    again = cli("stage", "prep", "-p", p, "--batch", batch)
    assert again.returncode == 0 and "up to date (cache hit)" in again.stdout
    wrong = cli("stage", "prepp", "-p", p, "--batch", batch)
    assert wrong.returncode == 2
    assert "there is no stage 'prepp'; did you mean 'prep'?" in wrong.stderr
    missing = cli("stage", "prep", "-p", p)
    assert missing.returncode == 2 and "--batch" in missing.stderr
    unknown = cli("stage", "features", "-p", p, "--batch", "nope")
    assert unknown.returncode == 2 and "there is no batch 'nope'" in unknown.stderr


def test_a_failing_call_exits_1_and_says_why(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + "quarantine: {max_bad_share: 0.0}\n")
    land(tmp_path, "a.csv", [(1, 2), (-1, 4)])  # x: min 0 -> one bad row of two
    driftloop.run_stage(tmp_path, "ingest")
    (call,) = driftloop.plan(tmp_path).waves[0]
    done = cli("stage", "prep", "-p", str(tmp_path), "--batch", str(call.batch_id))
    assert done.returncode == 1 and "broke the contract" in done.stdout


def test_every_event_in_the_log_is_typed(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2)])
    driftloop.run(tmp_path)
    with StateDB(Layout(tmp_path).state_db) as db:
        logged = db.events(limit=100)
    kinds = [type(events.parse(row)).__name__ for row in logged]
    assert kinds[0] == "DataArrived" and "StageSucceeded" in kinds
    with pytest.raises(ValueError, match="unknown event type 'Nope'"):
        events.parse({"type": "Nope"})
