"""Data-to-deploy latency: a 100k-row file lands, and /predict answers with the new model.

    .venv/bin/python benchmarks/latency.py [--runs 5] [--rows 100000]

Starts ``driftloop up`` (the loop and the server) on a generated 20-column classification
project with a first model, then, run after run, lands a new 100k-row file whose concept
has moved (so the challenger trained on it beats the champion and is promoted), written
under a temporary name and renamed into the raw folder as a data pipeline would, and polls
/predict every 10 ms until an answer names the new version. Each run is split into compute
(the stages' own time from the state database: prep, features, the check against the
champion, training with registration and the gate; plus the server's load of the new
version) and orchestration overhead (everything else: noticing the file, hashing it,
scheduling, the server noticing the promotion). Each file lands on an idle loop (the
previous file's check, which follows its training, has finished). Prints every run and the
median.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

from driftloop.core.layout import Layout
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
serving: {{workers: 2, events_poll_seconds: 0.1}}
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


def compute_seconds(project: Path, version: str) -> dict[str, float]:
    """The stages' own time for the batch that made ``version``, and the server's load."""
    with StateDB(Layout(project).state_db) as db:
        events = db.events(10_000)
        runs = db.stage_runs(10_000)
    registered = next(
        e for e in events if e["type"] == "ModelRegistered" and str(e["version"]) == version
    )
    train = next(
        r
        for r in runs
        if r["stage"] == "train"
        and r["status"] == "succeeded"
        and r["finished_at"] >= registered["ts"][:19]
    )
    batch_id = train["batch_id"]
    out = {
        stage: sum(
            r["seconds"] or 0 for r in runs if r["stage"] == stage and r["batch_id"] == batch_id
        )
        for stage in ("prep", "features", "monitor", "train")
    }
    served = [e for e in events if e["type"] == "ModelServed" and str(e["version"]) == version]
    out["server_load"] = min(e["seconds"] or 0 for e in served) if served else 0.0
    return out


def parts_batch(project: Path, version: str) -> str:
    with StateDB(Layout(project).state_db) as db:
        events = db.events(10_000)
    registered = next(
        e for e in events if e["type"] == "ModelRegistered" and str(e["version"]) == version
    )
    started = [e for e in events if e["type"] == "StageStarted" and e["id"] < registered["id"]]
    return str(started[-1]["batch_id"])


def idle(project: Path, batch_id: str, timeout: float = 120) -> None:
    """Wait until the loop has finished with the batch (its check follows the training), so
    the next file lands on an idle loop, as files landing minutes or hours apart do."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="driftloop-latency-"))
    project = work / "project"
    project.mkdir()
    numbers = "\n".join(f"    {n}: {{dtype: float}}" for n in NUMBERS)
    (project / "driftloop.yaml").write_text(SPEC.format(numbers=numbers, rows=args.rows))
    land(project, batch(args.rows, 0, seed=0), "part-000.csv")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # training may use both cores
    log = (work / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", "up", "-p", str(project), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    probe = batch(1, 0, seed=99).drop("y").to_dicts()[0]
    load = os.getloadavg()[0]
    print(f"cpus {os.cpu_count()}, {args.rows} rows per file, {args.runs} runs; load {load:.1f}")
    try:
        wait_for_version(url, probe, "1", 300)
        time.sleep(3)
        rows = []
        for k in range(1, args.runs + 1):
            frame = batch(args.rows, k, seed=k)
            landed = land(project, frame, f"part-{k:03d}.csv")
            version = str(k + 1)
            served = wait_for_version(url, probe, version, 300)
            total = served - landed
            parts = compute_seconds(project, version)
            compute = sum(parts.values())
            rows.append((total, compute, total - compute, parts))
            detail = ", ".join(f"{s} {v:.2f}" for s, v in parts.items())
            print(
                f"run {k}: {total:.2f} s to serve v{version}: compute {compute:.2f} s "
                f"({detail}), overhead {total - compute:.2f} s"
            )
            idle(project, parts_batch(project, version))
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    totals = [r[0] for r in rows]
    overheads = [r[2] for r in rows]
    total, overhead = statistics.median(totals), statistics.median(overheads)
    compute = statistics.median(r[1] for r in rows)
    print(
        f"median of {len(rows)}: {total:.2f} s data-to-deploy, {compute:.2f} s compute, "
        f"{overhead:.2f} s overhead"
    )
    print(
        f"targets: <= 10 s in total ({'met' if total <= 10 else 'NOT met'}), "
        f"<= 1 s overhead ({'met' if overhead <= 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
