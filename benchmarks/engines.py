"""The same multi-batch workload through the built-in loop, Prefect, and Prefect on Dask.

    .venv-prefect/bin/python benchmarks/engines.py [--batches 24] [--months-per-batch 4]
                                                   [--only builtin prefect dask1 dask2]

Runs in ``.venv-prefect`` (``make prefect-venv``): it starts its own ``prefect server`` on
127.0.0.1 (the tests' fixture code) and, for the Dask rows, the flow starts a
``LocalCluster(processes=True)`` of 1 or 2 workers, each held to one thread (Polars and
OpenMP too): on 2 cores the honest test of distribution is one thread per worker.

The workload: ``--batches`` batches of the NYC taxi sample (``../shared/datasets``), each
one CSV of ``--months-per-batch`` consecutive monthly files (10,000 rows a month; batch i
starts at month i, so no two batches hold the same content), already
ingested; the timed pass makes prep and features of every batch (``model.enabled: false``,
the data stages that fan out). Each row is a fresh project built the same way, timed as one
CLI call in a fresh process (start-up included):

- ``builtin``: ``driftloop run`` (the embedded loop);
- ``prefect``: ``driftloop prefect run`` with ``engine: local`` (Prefect's default runner,
  every call in the flow's process);
- ``dask1`` / ``dask2``: ``driftloop prefect run`` with ``engine: dask``, 1 or 2 workers.

Reported per row: wall time, the stage calls' own seconds (the state database's stage runs),
the same call again with nothing to do (the fixed cost of a pass: for Prefect, a flow run
and, on Dask, a cluster started), and for the Prefect rows the orchestration's cost per
stage call: (wall - builtin wall - the difference of the idle passes) / calls. The
targets (issue 14, section 4): Prefect adds at most 0.3 s per stage call; 2
workers at least 1.7x faster than 1. Then a paper projection from the measured per-batch
cost: a day of hourly files for 1,000 sources on a 16-worker cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.prefect_server import start_server  # noqa: E402 (the repo on the path)

TAXI = REPO.parent / "shared" / "datasets" / "nyc_taxi_yellow_sample"
CLI = [sys.executable, "-m", "driftloop.cli"]
SPEC = """
name: taxi
task: classification
target: payment_type
time_column: pickup_datetime
sources:
  - name: trips
    path: data/raw/trips/*.csv
contract:
  columns:
    vendor_id: {dtype: int, allowed: [1, 2, 4]}
    pickup_datetime: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    dropoff_datetime: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S"}
    passenger_count: {dtype: int, min: 0, max: 9}
    trip_distance: {dtype: float, min: 0, max: 500}
    rate_code_id: {dtype: int}
    store_and_fwd_flag: {dtype: str, allowed: ["Y", "N"]}
    pickup_location_id: {dtype: int}
    dropoff_location_id: {dtype: int}
    payment_type: {dtype: int}
    fare_amount: {dtype: float, min: 0}
    extra: {dtype: float}
    mta_tax: {dtype: float}
    tip_amount: {dtype: float}
    tolls_amount: {dtype: float}
    improvement_surcharge: {dtype: float}
    total_amount: {dtype: float}
    congestion_surcharge: {dtype: float}
quarantine: {max_bad_share: 0.2}
features:
  datetime_parts: {pickup_datetime: [hour, weekday]}
  exclude: [total_amount, tip_amount]
ingest: {settle_seconds: 0}
model: {enabled: false}
"""
ENGINES = {
    "builtin": None,
    "prefect": "engine: local\n",
    "dask1": "engine: {name: dask, workers: 1, threads_per_worker: 1}\n",
    "dask2": "engine: {name: dask, workers: 2, threads_per_worker: 1}\n",
}


def build(project: Path, batches: int, months: int, engine: str | None) -> None:
    """A project whose ``batches`` batches are ingested and nothing else is done."""
    project.mkdir(parents=True)
    (project / "driftloop.yaml").write_text(SPEC + (engine or ""))
    files = sorted(TAXI.glob("*.csv"))
    folder = project / "data" / "raw" / "trips"
    folder.mkdir(parents=True)
    for i in range(batches):
        parts = [files[(i + j) % len(files)] for j in range(months)]  # distinct per batch
        lines = parts[0].read_text().splitlines(keepends=True)
        for part in parts[1:]:
            lines += part.read_text().splitlines(keepends=True)[1:]
        (folder / f"batch-{i:03d}.csv").write_text("".join(lines))
        out = subprocess.run(
            [*CLI, "stage", "ingest", "-p", str(project)], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"ingest of batch {i} failed: {out.stderr}")


def stage_seconds(project: Path) -> tuple[int, float]:
    with sqlite3.connect(project / ".driftloop" / "state.db") as conn:
        rows = conn.execute(
            "SELECT count(*), coalesce(sum(seconds), 0) FROM stage_runs "
            "WHERE status = 'succeeded' AND stage IN ('prep', 'features')"
        ).fetchone()
    return int(rows[0]), float(rows[1])


def timed(project: Path, name: str, env: dict[str, str]) -> float:
    verb = ["run"] if name == "builtin" else ["prefect", "run"]
    started = time.perf_counter()
    out = subprocess.run(
        [*CLI, *verb, "-p", str(project)], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{name}: exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--months-per-batch", type=int, default=4)
    parser.add_argument("--only", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = parser.parse_args()
    if not TAXI.is_dir():
        raise SystemExit(f"{TAXI} is missing: the benchmark needs the shared datasets")
    root = Path(tempfile.mkdtemp(prefix="driftloop-engines-"))
    server = start_server()
    env = {**os.environ, **server.env, "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    results: dict[str, tuple[float, int, float, float]] = {}
    try:
        for name in args.only:
            project = root / name
            build(project, args.batches, args.months_per_batch, ENGINES[name])
            load = os.getloadavg()[0]
            wall = timed(project, name, env)
            calls, seconds = stage_seconds(project)
            idle = timed(project, name, env)  # the same call with nothing to do: fixed costs
            results[name] = (wall, calls, seconds, idle)
            print(
                f"{name:8} wall {wall:7.2f} s  {calls} stage calls, {seconds:7.2f} s in them; "
                f"a pass with nothing to do {idle:5.2f} s; load {load:.2f} -> "
                f"{os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)",
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    rows = args.batches * args.months_per_batch * 10_000
    print(f"\n{args.batches} batches, {rows:,} rows, load {os.getloadavg()[0]:.2f}")
    base = results.get("builtin")
    if base is not None:
        for name in ("prefect", "dask1", "dask2"):
            if name in results:
                wall, calls, _, idle = results[name]
                fixed = idle - base[3]  # starting a flow run (and a cluster) once per pass
                extra = (wall - base[0] - fixed) / max(calls, 1)
                print(
                    f"{name}: {fixed:+.2f} s per pass (flow run start), {extra:+.3f} s per "
                    "stage call against the built-in loop"
                )
    if "dask1" in results and "dask2" in results:
        one, two = results["dask1"], results["dask2"]
        print(
            f"2 workers against 1: {one[0] / two[0]:.2f}x on the wall; "
            f"{(one[0] - one[3]) / (two[0] - two[3]):.2f}x without the fixed cost of a pass"
        )
    if "dask1" in results:
        wall, calls, seconds, idle = results["dask1"]
        per_batch = (wall - idle) / args.batches  # one worker: a batch's prep and features
        day = 1_000 * 24  # hourly files of 1,000 sources
        print(
            f"projection (paper, linear): {day:,} batches a day at {per_batch:.2f} s each on "
            f"one worker is {day * per_batch / 3600:.1f} worker-hours, "
            f"{day * per_batch / 16 / 3600:.2f} h on 16 workers if they scale linearly (the "
            "1 -> 2 row above says whether this machine showed that)"
        )


if __name__ == "__main__":
    main()
