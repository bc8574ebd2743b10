"""Crash safety: ``kill -9`` the watcher at random moments of a multi-batch run, restart it,
and check that nothing was lost, nothing was done twice, and the registry agrees with the
event log.

Each trial lands one more file, starts ``driftloop watch`` and kills it (SIGKILL) after a
random delay, which lands in any stage: start-up, ingest, prep, features, the check against
the champion, training, registering, the gate. A last clean ``watch --until-idle`` finishes
what the kills interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from driftloop.core.layout import Layout, is_complete, read_manifest
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.features.stage import read_features
from driftloop.models.mlflow_registry import MlflowRegistry, load_predictor
from driftloop.models.registry import CHAMPION, open_registry
from driftloop.train.stage import last_training

from .helpers import write_spec
from .test_lifecycle import SPEC, land

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]

TRIALS = 20
ROWS = 400
CLI = [sys.executable, "-m", "driftloop.cli"]
QUICK = "monitoring: {permutations: 199}\n"
HANG_GUARD = 600.0  # seconds: a stuck watcher fails the test, a slow one does not


def stages_started(project: Path) -> int:
    """StageStarted events in the project's log so far (0 before the database exists)."""
    layout = Layout(project)
    if not layout.state_db.exists():
        return 0
    with StateDB(layout.state_db) as db:
        return sum(1 for e in db.events(limit=100_000) if e["type"] == "StageStarted")


def test_kill_9_at_random_moments_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + QUICK)
    rng = random.Random(20261128)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    in_stage = 0
    for trial in range(TRIALS):
        land(tmp_path, f"part-{trial:02d}.csv", ROWS, seed=trial + 1, start_day=trial % 20)
        before = stages_started(tmp_path)
        watcher = subprocess.Popen(
            [*CLI, "watch", "-p", str(tmp_path), "--interval", "0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if trial % 2:
            # Inside a stage: as soon as the watcher has started one (an event waited for,
            # whatever the machine's load), then a moment later.
            deadline = time.monotonic() + HANG_GUARD
            while stages_started(tmp_path) == before and watcher.poll() is None:
                assert time.monotonic() < deadline, "the watcher never started a stage"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.05))
            in_stage += 1
        else:
            time.sleep(rng.uniform(0.05, 3.0))  # anywhere: start-up, ingest, a stage, idle
        os.kill(watcher.pid, signal.SIGKILL)
        watcher.wait()
    finish = subprocess.run(
        [*CLI, "watch", "-p", str(tmp_path), "--until-idle", "--interval", "0.1"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert finish.returncode == 0, finish.stdout[-3000:] + finish.stderr[-3000:]

    layout = Layout(tmp_path)
    spec = load_spec(tmp_path)
    raw = sorted((layout.raw / "s").glob("*.csv"))
    with StateDB(layout.state_db) as db:
        files = [f for b in db.batches() for f in db.batch_files(b.batch_id)]
        batches = db.batches()
        arrived = [e["batch_id"] for e in db.events(10_000) if e["type"] == "DataArrived"]
        unapplied = db.unapplied(spec.name)
        events = db.events(10_000)
        decisions = [
            d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"
        ]

    # Every raw file taken exactly once, into exactly one batch, announced once.
    assert sorted(f.path for f in files) == sorted(layout.relative(p) for p in raw)
    assert len({f.sha256 for f in files}) == len(raw) == TRIALS
    assert sorted(arrived) == sorted(b.batch_id for b in batches)

    # Every batch's outputs complete, consistent with each other, rows conserved.
    rows_in = 0
    for batch in batches:
        processed = layout.processed / batch.batch_id
        features = layout.features / batch.batch_id
        assert is_complete(processed) and is_complete(features), batch.batch_id
        m = read_manifest(processed)
        assert m["rows_in"] == m["rows_ok"] + m["rows_quarantined"] + m["rows_duplicate"]
        rows_in += m["rows_in"]
        assert read_features(layout, batch.batch_id).collect().height == m["rows_ok"]
    assert rows_in == ROWS * TRIALS
    leftovers = [p for p in layout.root.rglob(".tmp-*")] + [p for p in layout.root.rglob(".old-*")]
    assert not leftovers, leftovers

    # The last training saw every batch, through outputs that are complete and current.
    last = last_training(layout, StateDB(layout.state_db))
    assert last is not None
    assert {m["batch_id"] for m in last["inputs"]} == {b.batch_id for b in batches}
    for item in last["inputs"]:
        features_manifest = read_manifest(layout.features / item["batch_id"])
        assert features_manifest["run_key"] == item["features_run_key"]

    # The registry's champion is the one the event log's decisions name; none is pending.
    assert unapplied == []
    registry = open_registry(spec, layout)
    assert isinstance(registry, MlflowRegistry)
    champion = registry.alias(CHAMPION)
    assert champion == str(decisions[-1]["version"])
    predictions = pl.read_parquet(layout.processed / batches[-1].batch_id / "data.parquet")
    predictor = load_predictor(registry, f"models:/{spec.name}@champion")
    assert predictor.predict(predictions.drop("y").head(5).to_dicts()).height == 5
    assert in_stage == TRIALS // 2
    started = [e["key"] for e in events if e["type"] == "StageStarted"]
    finished = {e["key"] for e in events if e["type"] in ("StageSucceeded", "StageFailed")}
    assert len(started) > len(finished)  # some kills landed inside a stage

    # Nothing the kills left dangles: no stage run stuck at "running", and every version
    # registered in the registry has a decision (the gate's, or "interrupted").
    with StateDB(layout.state_db) as db:
        assert db.running() == []
        decided = {str(d["version"]) for d in db.decisions(spec.name)}
    assert {v.version for v in registry.versions()} <= decided


@pytest.mark.parametrize("delay", [0.4, 0.8, 1.2, 1.6])
def test_a_kill_while_the_registry_is_first_created_leaves_no_broken_store(
    tmp_path: Path, delay: float
) -> None:
    """MLflow builds a new SQLite store with one migration after another; a process killed in
    the middle must not leave a store that every later open fails on."""
    code = (
        "from pathlib import Path\n"
        "from driftloop.models.mlflow_registry import ensure_sqlite_store\n"
        f"root = Path({str(tmp_path)!r})\n"
        "ensure_sqlite_store(root / 'mlflow.db', root / 'mlartifacts')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() in (0, -signal.SIGKILL)  # done, or killed: not failed at import
    write_spec(tmp_path, SPEC + QUICK)
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    # Whatever the moment, the store either is not there or is whole: it opens and works.
    registry = open_registry(spec, layout)
    assert registry.alias(CHAMPION) is None
    assert registry.versions() == []
    assert isinstance(registry, MlflowRegistry)
    assert registry.client(write=True).search_registered_models() == []  # it opens to write
