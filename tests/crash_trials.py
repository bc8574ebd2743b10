"""``kill -9`` trials of ``driftloop watch`` and the checks after them, shared by
tests/test_crash.py and benchmarks/reliability.py (which reruns them at its own size).

``kill_watch_at_random`` lands one more file per trial, starts ``driftloop watch`` and kills
it (SIGKILL) after a random delay, every other trial just after a stage started;
``finish`` runs a clean ``watch --until-idle``; ``crash_problems`` lists, as sentences,
everything that was lost, repeated or left inconsistent (an empty list: nothing).
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

from driftloop.core.layout import Layout, is_complete, read_manifest
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.features.stage import read_features
from driftloop.models.mlflow_registry import MlflowRegistry, load_predictor
from driftloop.models.registry import CHAMPION, open_registry
from driftloop.train.stage import last_training

from .helpers import write_spec
from .test_lifecycle import SPEC, land

CLI = [sys.executable, "-m", "driftloop.cli"]
QUICK = "monitoring: {permutations: 199}\n"
HANG_GUARD = 600.0  # seconds: a stuck watcher fails the trial, a slow one does not


def stages_started(project: Path) -> int:
    """StageStarted events in the project's log so far (0 before the database exists)."""
    layout = Layout(project)
    if not layout.state_db.exists():
        return 0
    with StateDB(layout.state_db) as db:
        return sum(1 for e in db.events(limit=100_000) if e["type"] == "StageStarted")


def kill_watch_at_random(project: Path, trials: int, rows: int, seed: int) -> int:
    """``trials`` kills of a watcher, one more landed file each; the kills inside a stage."""
    write_spec(project, SPEC + QUICK)
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    in_stage = 0
    for trial in range(trials):
        land(project, f"part-{trial:02d}.csv", rows, seed=trial + 1, start_day=trial % 20)
        before = stages_started(project)
        watcher = subprocess.Popen(
            [*CLI, "watch", "-p", str(project), "--interval", "0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if trial % 2:
            # Inside a stage: as soon as the watcher has started one (an event waited for,
            # whatever the machine's load), then a moment later.
            deadline = time.monotonic() + HANG_GUARD
            while stages_started(project) == before and watcher.poll() is None:
                if time.monotonic() > deadline:
                    watcher.kill()
                    raise RuntimeError(f"trial {trial}: the watcher never started a stage")
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.05))
            in_stage += 1
        else:
            time.sleep(rng.uniform(0.05, 3.0))  # anywhere: start-up, ingest, a stage, idle
        os.kill(watcher.pid, signal.SIGKILL)
        watcher.wait()
    return in_stage


def finish(project: Path) -> subprocess.CompletedProcess[str]:
    """A clean ``watch --until-idle``: it finishes what the kills interrupted."""
    return subprocess.run(
        [*CLI, "watch", "-p", str(project), "--until-idle", "--interval", "0.1"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def crash_problems(project: Path, trials: int, rows: int) -> list[str]:
    """What is lost, repeated or inconsistent after the kills and ``finish`` (none: [])."""
    problems: list[str] = []
    layout = Layout(project)
    spec = load_spec(project)
    raw = sorted((layout.raw / "s").glob("*.csv"))
    with StateDB(layout.state_db) as db:
        batches = db.batches()
        files = [f for b in batches for f in db.batch_files(b.batch_id)]
        events = db.events(10_000)
        unapplied = db.unapplied(spec.name)
        decisions = [
            d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"
        ]
    arrived = [e["batch_id"] for e in events if e["type"] == "DataArrived"]

    # Every raw file taken exactly once, into exactly one batch, announced once.
    taken = sorted(f.path for f in files)
    if taken != sorted(layout.relative(p) for p in raw):
        problems.append(f"raw files and batch files differ: {taken} vs {len(raw)} raw files")
    if not len({f.sha256 for f in files}) == len(files) == len(raw) == trials:
        problems.append(f"{len(files)} batch files for {len(raw)} raw files ({trials} landed)")
    if sorted(arrived) != sorted(b.batch_id for b in batches):
        problems.append(f"DataArrived events {sorted(arrived)} do not match the batches")

    # Every batch's outputs complete, consistent with each other, rows conserved.
    rows_in = 0
    for batch in batches:
        processed = layout.processed / batch.batch_id
        features = layout.features / batch.batch_id
        if not (is_complete(processed) and is_complete(features)):
            problems.append(f"batch {batch.batch_id}: processed or features incomplete")
            continue
        m = read_manifest(processed)
        if m["rows_in"] != m["rows_ok"] + m["rows_quarantined"] + m["rows_duplicate"]:
            problems.append(f"batch {batch.batch_id}: rows_in != ok + quarantined + duplicate")
        rows_in += m["rows_in"]
        if read_features(layout, batch.batch_id).collect().height != m["rows_ok"]:
            problems.append(f"batch {batch.batch_id}: features rows != processed rows_ok")
    if rows_in != rows * trials:
        problems.append(f"{rows_in} rows in the batches, {rows * trials} landed")
    leftovers = [*layout.root.rglob(".tmp-*"), *layout.root.rglob(".old-*")]
    if leftovers:
        problems.append(f"leftover temporary outputs: {leftovers[:5]}")

    # The last training saw every batch, through outputs that are complete and current.
    with StateDB(layout.state_db) as db:
        last = last_training(layout, db)
    if last is None:
        return [*problems, "no training after the kills"]
    if {m["batch_id"] for m in last["inputs"]} != {b.batch_id for b in batches}:
        problems.append("the last training did not see every batch")
    for item in last["inputs"]:
        if read_manifest(layout.features / item["batch_id"])["run_key"] != item["features_run_key"]:
            problems.append(f"batch {item['batch_id']}: trained on stale features")

    # The registry's champion is the one the event log's decisions name; none is pending.
    if unapplied:
        problems.append(f"decisions not applied to the registry: {unapplied}")
    registry = open_registry(spec, layout)
    # Nothing the kills left dangles: no stage run stuck at "running", and every version
    # registered in the registry has a decision (the gate's, or "interrupted").
    with StateDB(layout.state_db) as db:
        running = db.running()
        decided = {str(d["version"]) for d in db.decisions(spec.name)}
    if running:
        problems.append(f"{len(running)} stage run(s) left at 'running'")
    undecided = sorted({v.version for v in registry.versions()} - decided)
    if undecided:
        problems.append(f"registered version(s) {undecided} have no decision")
    if not isinstance(registry, MlflowRegistry):
        problems.append(f"the registry is {type(registry).__name__}, not MLflow")
    champion = registry.alias(CHAMPION)
    if not decisions or champion != str(decisions[-1]["version"]):
        named = decisions[-1]["version"] if decisions else None
        problems.append(f"registry champion {champion} but the decisions name {named}")
    frame = pl.read_parquet(layout.processed / batches[-1].batch_id / "data.parquet")
    predictor = load_predictor(registry, f"models:/{spec.name}@champion")
    if predictor.predict(frame.drop("y").head(5).to_dicts()).height != 5:
        problems.append("the champion does not predict")
    return problems


def stage_kills(project: Path) -> int:
    """Stage runs that started and never ended: kills that landed inside a stage."""
    with StateDB(Layout(project).state_db) as db:
        events = db.events(10_000)
    started = [e["key"] for e in events if e["type"] == "StageStarted"]
    finished = {e["key"] for e in events if e["type"] in ("StageSucceeded", "StageFailed")}
    return len(started) - len(finished)
