"""Data-to-deploy latency: a 100k-row file lands, and /predict answers with the new model.

    .venv/bin/python benchmarks/latency.py [--runs 5] [--rows 100000] [--modes check,train-first]

Starts ``driftloop up`` (the loop and the server) on two generated 20-column classification
projects with a first model, side by side in one run:

- **check**: ``retrain: {every_batches: 0}``: only drift or decay found by the check of the
  new batch against the champion trains, so the check is on the path (a triggered policy);
- **train-first**: the default ``every_batches: 1``: new data trains at once and the check
  follows the promotion, off the path.

Run after run, each project in turn gets a new 100k-row file whose concept has moved (so
the champion's realized performance decays, and the challenger trained on it beats the
champion and is promoted), written under a temporary name and renamed into the raw folder
as a data pipeline would, and /predict is polled every 10 ms until an answer names the new
version. Each run is split along the path, from the state database's records (stage runs,
events) and the registry's run: ingest (noticing the file, hashing it, recording the
batch), prep, features, the check against the champion, training (fit and package, the
registry's run and version, what follows registration), the gate, the serving swap (the
server noticing the promotion, and loading the new version), and the gaps between them
(scheduling). Each file lands on an idle loop (the previous file's check, which follows
its training in the train-first mode, has finished). Prints every run, and the median of
each part per mode.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

from driftloop.core.layout import Layout, read_manifest
from driftloop.core.state import StateDB
from driftloop.serving.client import free_port

NUMBERS = [f"n{i:02d}" for i in range(15)]
CATEGORIES = {"channel": ["web", "app", "store", "phone"], "segment": ["A", "B", "C"]}
SPEC = """
name: latency
task: classification
target: y
time_column: ts
sources: [{{name: events, path: data/raw/events/*.csv}}]
contract:
  columns:
    ts: {{dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}}
{numbers}
    channel: {{dtype: str, allowed: [web, app, store, phone]}}
    segment: {{dtype: str, allowed: [A, B, C]}}
    y: {{dtype: str, allowed: ["no", "yes"], nullable: false}}
ingest: {{settle_seconds: 1.0}}
model:
  window: {{kind: last_rows, size: {rows}}}   # the newest file
promotion: {{min_improvement: 0.0}}
monitoring: {{permutations: 199, schedule_minutes: null}}
serving: {{workers: 2}}   # the default polls; a promotion here is noticed by notification
"""


def batch(rows: int, k: int, seed: int) -> pl.DataFrame:
    """Rows whose label depends on the inputs through weights that turn with k (new concept)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(NUMBERS)))
    angle = k * np.pi / 3
    w = np.zeros(len(NUMBERS))
    w[0], w[1] = 2 * np.cos(angle), 2 * np.sin(angle)
    w[2:5] = [0.5, -0.5, 0.3]
    logit = x @ w
    start = datetime(2025, 1, 1).timestamp() + k * 86_400 * 7
    stamps = [
        datetime.fromtimestamp(start + i * 5).strftime("%Y-%m-%d %H:%M:%S") for i in range(rows)
    ]
    data: dict[str, Any] = {"ts": stamps}
    data.update({n: x[:, i].round(4) for i, n in enumerate(NUMBERS)})
    for name, values in CATEGORIES.items():
        data[name] = rng.choice(values, rows)
    data["y"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pl.DataFrame(data)


def land(project: Path, frame: pl.DataFrame, name: str) -> float:
    """Write under a temporary name, rename into place; the moment it is complete."""
    folder = project / "data" / "raw" / "events"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    frame.write_csv(tmp)
    landed = time.time()
    tmp.rename(folder / name)
    return landed


def wait_for_version(url: str, body: dict[str, Any], version: str, timeout: float) -> float:
    deadline = time.time() + timeout
    with httpx.Client(timeout=10) as client:
        while time.time() < deadline:
            try:
                answer = client.post(f"{url}/predict", json=body)
                if answer.status_code == 200 and answer.json()["model"]["version"] == version:
                    return time.time()
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise SystemExit(f"v{version} was not served within {timeout:.0f}s")


def _t(ts: str) -> float:
    """Epoch seconds of a state-database timestamp (ISO 8601, UTC)."""
    when = datetime.fromisoformat(ts)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def breakdown(project: Path, name: str, version: str, landed: float, served: float) -> Breakdown:
    """The path from the file landing (``landed``) to /predict answering with ``version``
    (``served``), part by part, from the state database and the registry's run."""
    deadline = time.time() + 60  # the worker records ModelServed just after it swaps
    while True:
        with StateDB(Layout(project).state_db) as db:
            events = db.events(10_000)
            runs = db.stage_runs(10_000)
        served_events = [
            e for e in events if e["type"] == "ModelServed" and str(e["version"]) == version
        ]
        if served_events or time.time() > deadline:
            break
        time.sleep(0.05)
    arrived = next(
        e
        for e in events
        if e["type"] == "DataArrived" and any(f["path"].endswith(name) for f in e["files"])
    )
    batch_id = str(arrived["batch_id"])
    registered = next(
        e for e in events if e["type"] == "ModelRegistered" and str(e["version"]) == version
    )
    moved = next(e for e in events if e["type"] == "ChampionMoved" and str(e["version"]) == version)
    if not served_events:
        raise SystemExit(f"v{version} answered, but no worker recorded ModelServed within 60 s")
    first_swap = min(served_events, key=lambda e: e["at"])

    def run(stage: str, batch: str | None) -> dict[str, Any] | None:
        found = [
            r
            for r in runs
            if r["stage"] == stage
            and r["status"] == "succeeded"
            and (batch is None or r["batch_id"] == batch)
            and _t(r["started_at"]) >= landed
        ]
        return min(found, key=lambda r: r["started_at"]) if found else None

    train = run("train", None)
    assert train is not None, f"no training after {name} landed"
    promote = next(
        r
        for r in sorted(runs, key=lambda r: r["started_at"])
        if r["stage"] == "promote" and r["started_at"] >= train["finished_at"]
    )
    check = run("monitor", batch_id)
    on_path = check is not None and check["finished_at"] <= train["started_at"]
    parts: dict[str, float] = {"ingest": _t(arrived["ts"]) - landed}
    for stage in ("prep", "features"):
        found = run(stage, batch_id)
        parts[stage] = float(found["seconds"]) if found else 0.0
    parts["check"] = float(check["seconds"]) if check is not None and on_path else 0.0
    run_started = registry_run_started(project, str(registered["run_id"]))
    parts["fit+package"] = run_started - _t(train["started_at"])
    parts["register"] = _t(registered["ts"]) - run_started
    parts["after register"] = _t(train["finished_at"]) - _t(registered["ts"])
    parts["gate"] = float(promote["seconds"])
    parts["swap notice"] = first_swap["at"] - first_swap["seconds"] - _t(moved["ts"])
    parts["swap load"] = float(first_swap["seconds"])
    parts["gaps"] = served - landed - sum(parts.values())
    timings = read_manifest(project / train["output"]).get("timings", {}) if train["output"] else {}
    return Breakdown(served - landed, parts, on_path, batch_id, timings)


def registry_run_started(project: Path, run_id: str) -> float:
    """When the registry's run of a version started (epoch seconds): training hands over
    to registration there."""
    from driftloop.core.spec import load_spec
    from driftloop.models.registry import open_registry

    spec = load_spec(project)
    registry = open_registry(spec, Layout(project))
    return float(registry.client().get_run(run_id).info.start_time) / 1000


@dataclass
class Breakdown:
    total: float
    parts: dict[str, float]
    check_on_path: bool
    batch_id: str
    train_parts: dict[str, float]  # the train stage's manifest timings


def idle(project: Path, batch_id: str, timeout: float = 120) -> None:
    """Wait until the loop has finished with the batch (its check follows the training in
    the train-first mode), so the next file lands on an idle loop, as files landing
    minutes or hours apart do."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with StateDB(Layout(project).state_db) as db:
            runs = db.stage_runs(10_000)
        if any(
            r["stage"] == "monitor" and r["batch_id"] == batch_id and r["status"] == "succeeded"
            for r in runs
        ):
            time.sleep(1)
            return
        time.sleep(0.2)


MODES = {
    # only drift or decay found by the new batch's check trains: the check is on the path
    "check": "retrain: {every_batches: 0}\n",
    # new data trains at once; the check follows the promotion
    "train-first": "",
}


@dataclass
class Project:
    mode: str
    root: Path
    url: str
    up: subprocess.Popen[bytes]
    results: list[Breakdown]


def start(work: Path, mode: str, rows: int) -> Project:
    root = work / mode
    root.mkdir()
    numbers = "\n".join(f"    {n}: {{dtype: float}}" for n in NUMBERS)
    (root / "driftloop.yaml").write_text(SPEC.format(numbers=numbers, rows=rows) + MODES[mode])
    land(root, batch(rows, 0, seed=0), "part-000.csv")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # training may use both cores
    log = (work / f"{mode}.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", "up", "-p", str(root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: stopped as one
    )
    return Project(mode, root, f"http://127.0.0.1:{port}", up, [])


def stop(project: Project) -> None:
    if project.up.poll() is None:
        project.up.send_signal(signal.SIGTERM)
        try:
            project.up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(project.up.pid, signal.SIGKILL)
            project.up.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--modes", default=",".join(MODES), help="of: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; use some of {list(MODES)}")
    work = Path(tempfile.mkdtemp(prefix="driftloop-latency-"))
    probe = batch(1, 0, seed=99).drop("y").to_dicts()[0]
    print(
        f"cpus {os.cpu_count()}, {args.rows} rows per file, {args.runs} runs per mode "
        f"({', '.join(modes)}, in turn); load {os.getloadavg()[0]:.1f}"
    )
    projects: list[Project] = []
    try:
        for mode in modes:  # one at a time: two first trainings at once would skew nothing
            projects.append(start(work, mode, args.rows))  # but the start
            wait_for_version(projects[-1].url, probe, "1", 1800)
        time.sleep(3)
        for k in range(1, args.runs + 1):
            for p in projects:
                name = f"part-{k:03d}.csv"
                frame = batch(args.rows, k, seed=k)
                landed = land(p.root, frame, name)
                version = str(k + 1)
                served = wait_for_version(p.url, probe, version, 1800)
                found = breakdown(p.root, name, version, landed, served)
                p.results.append(found)
                detail = ", ".join(f"{s} {v:.2f}" for s, v in found.parts.items())
                where = "on the path" if found.check_on_path else "after"
                print(
                    f"{p.mode} run {k}: {found.total:.2f} s to serve v{version} "
                    f"(check {where}): {detail}",
                    flush=True,
                )
                inside = ", ".join(f"{s} {v:.2f}" for s, v in found.train_parts.items())
                print(f"  the train stage's own parts: {inside}", flush=True)
                idle(p.root, found.batch_id)
    finally:
        for p in projects:
            stop(p)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    names = list(projects[0].results[0].parts) if projects and projects[0].results else []
    width = {n: max(len(n) + 2, 8) for n in names}
    print(f"{'median':<12}{'total':>8}" + "".join(f"{n:>{width[n]}}" for n in names))
    medians = {}
    for p in projects:
        medians[p.mode] = statistics.median(r.total for r in p.results)
        cells = "".join(
            f"{statistics.median(r.parts[n] for r in p.results):>{width[n]}.2f}" for n in names
        )
        print(f"{p.mode:<12}{medians[p.mode]:>8.2f}{cells}")
    if "check" in medians:
        total = medians["check"]
        print(
            f"target (issue 17): with the check on the path <= 2 s and >= 5x faster than "
            f"8.5 s: {total:.2f} s, {8.5 / total:.1f}x ({'met' if total <= 2 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
