"""A restart puts right what ``kill -9`` left: stage runs stuck at "running" and a
registered version with no decision.

Each test runs ``driftloop run`` in a child process that stops inside a stage's commit (the
output store's ``seal`` waits there, and says so with a marker file), kills it with SIGKILL
once it is there (an event waited for, not a time), and runs again. The only change to the
child is that wait, so the kill lands at a known point; everything else is the real CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.models.registry import CHAMPION, open_registry
from driftloop.orchestration.reconcile import abandoned_runs, undecided_versions

from .helpers import write_spec
from .test_lifecycle import SPEC, land
from .test_state_faults import project_with_a_file

HANG_GUARD = 600.0  # seconds: only a child that never reaches the commit fails on it

CHILD = """
import pathlib, sys, time
from driftloop.core import outputs, state

marker, where, project = sys.argv[1:4]
commit, record = outputs.LocalOutputStore.seal, state.StateDB.record_event

def wait_here():
    pathlib.Path(marker).write_text("there")
    while True:  # until SIGKILL
        time.sleep(1)

def seal(self, attempt, manifest):
    if f"/data/{where}/" in str(attempt):
        wait_here()
    commit(self, attempt, manifest)

def record_event(self, type_, payload):
    if type_ == where:
        wait_here()
    record(self, type_, payload)

outputs.LocalOutputStore.seal = seal
state.StateDB.record_event = record_event
from driftloop.cli import app
sys.argv = ["driftloop", "run", "-p", project]
app()
"""


def kill_inside_commit(project: Path, folder: str) -> None:
    """Run ``driftloop run`` until it is inside the commit of a ``data/<folder>`` output,
    then SIGKILL it."""
    marker = project.parent / f"in-{folder}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), folder, str(project)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + HANG_GUARD
    while not marker.exists():
        assert child.poll() is None, f"the run ended ({child.returncode}) before the commit"
        assert time.monotonic() < deadline, "the child never reached the commit"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(HANG_GUARD) == -signal.SIGKILL


def test_a_run_left_running_by_a_kill_is_marked_interrupted_and_run_again(
    tmp_path: Path,
) -> None:
    project = project_with_a_file(tmp_path / "p")
    kill_inside_commit(project, "features")
    with StateDB(Layout(project).state_db) as db:
        [stuck] = db.running()
    assert stuck["stage"] == "features"

    again = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert (
        f"after an interruption: features {stuck['batch_id']}: interrupted: the process "
        "running it stopped before it finished" in again.output
    ), again.output
    assert f"features {stuck['batch_id']}: 3 rows" in again.output, again.output
    with StateDB(Layout(project).state_db) as db:
        assert db.running() == []
        assert db.run_status(stuck["key"])[0] == "succeeded"
        failed = [e for e in db.events_after(0, types=("StageFailed",)) if e["key"] == stuck["key"]]
    assert len(failed) == 1 and failed[0]["error"].startswith("interrupted:")


@pytest.mark.parametrize(
    "where",
    [
        "models",  # registered and recorded; the training's output not committed
        "ModelRegistered",  # registered; killed before the state database recorded it
    ],
)
def test_a_version_registered_by_a_killed_training_is_decided_never_left_dangling(
    tmp_path: Path, where: str
) -> None:
    project = tmp_path / "p"
    write_spec(project, SPEC)
    land(project, "a.csv", 600, seed=1)
    kill_inside_commit(project, where)
    with StateDB(Layout(project).state_db) as db:
        recorded = db.events_after(0, types=("ModelRegistered",))
        assert db.decisions("synth") == []
        assert [r["stage"] for r in db.running()] == ["train"]
    assert len(recorded) == (1 if where == "models" else 0)

    again = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert again.exit_code == 0, again.output
    assert "after an interruption: synth v1: rejected: interrupted:" in again.output
    with StateDB(Layout(project).state_db) as db:
        assert db.running() == []
        decisions = [(d["version"], d["decision"]) for d in db.decisions("synth")]
        [interrupted] = [d for d in db.decisions("synth") if d["version"] == "1"]
    assert decisions == [("1", "rejected"), ("2", "promoted")], decisions
    assert interrupted["reason"].startswith("interrupted: its training was stopped")
    registry = open_registry(load_spec(project), Layout(project))
    assert registry.alias(CHAMPION) == "2"
    [v1] = [v for v in registry.versions() if v.version == "1"]
    assert v1.tags["driftloop.decision"] == "rejected"

    # Nothing more to put right: the next pass reconciles nothing.
    third = CliRunner().invoke(app, ["run", "-p", str(project)])
    assert "after an interruption" not in third.output, third.output


def test_a_live_owner_keeps_its_run() -> None:
    run = {"stage": "prep", "batch_id": "b1", "key": "k"}
    mine = f"{os.uname().nodename}:{os.getpid()}:abc"
    assert abandoned_runs([run], {"prep:b1": mine}, os.uname().nodename) == []
    assert abandoned_runs([run], {"prep:b1": "elsewhere:1:abc"}, os.uname().nodename) == []
    [(gone, owner)] = abandoned_runs([run], {}, os.uname().nodename)
    assert gone is run and owner == "no process holds its claim"


def test_undecided_versions_leave_the_gates_own_and_decided_ones() -> None:
    registered = [
        {"version": "1", "run_id": "a", "ts": "2026-01-01T00:00:00"},
        {"version": "2", "run_id": "b", "ts": "2026-01-02T00:00:00"},
        {"version": "3", "run_id": "c", "ts": "2026-01-03T00:00:00"},
    ]
    decisions = [{"version": "1", "ts": "2026-01-01T00:01:00"}]
    found = undecided_versions(registered, decisions, store="s", pending_run="c", lost_runs=set())
    assert [e["version"] for e in found] == ["2"]
