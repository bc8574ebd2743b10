"""The same multi-batch workload through the built-in loop, Prefect, and Prefect on Dask.

    .venv-prefect/bin/python benchmarks/engines.py [--batches 24] [--months-per-batch 4]
                                                   [--repeat 1] [--rounds 1]
                                                   [--only builtin prefect dask1 dask2]

Runs in ``.venv-prefect`` (``make prefect-venv``): it starts its own ``prefect server`` on
127.0.0.1 (the tests' fixture code) and, for the Dask rows, the flow starts a
``LocalCluster(processes=True)`` of 1 or 2 workers, each held to one thread (Polars and
OpenMP too): on 2 cores the honest test of distribution is one thread per worker.

The workload: ``--batches`` batches of the NYC taxi sample (``../shared/datasets``), each
one CSV of ``--months-per-batch`` consecutive monthly files (10,000 rows a month; batch i
starts at month i, so no two batches hold the same content), written ``--repeat`` times
over (copy r with its times moved r seconds on, so no row is a duplicate: a prep-heavy
batch, ``--repeat`` times the rows and the stage work per call), already ingested; the
timed pass makes prep and features of every batch (``model.enabled: false``, the data
stages that fan out). Each row is a fresh project built the same way, timed as one
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
workers at least 1.7x faster than 1. ``--rounds N`` runs the rows N times, interleaved
(dask1, dask2, dask1, ...: on a shared machine both see the same load), each on a fresh
project, and prints every run and the median.

Where the time goes, per Prefect row (a second line): the CPU seconds of the pass's own
processes (the CLI, its flow, the Dask scheduler and workers) and of the Prefect server, and
from Prefect's API (the work pass's task runs' start and end times): the seconds inside
the task runs (the stage's own seconds, and the rest: Prefect's task engine and driftloop's
opening of the project, per call), how busy the workers were between the first task run's
start and the last one's end, and the flow's time before the first and after the last.
Then a paper projection from the measured per-batch cost: a day of hourly files for 1,000
sources on a 16-worker cluster.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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


def _moved(lines: list[str], seconds: int) -> list[str]:
    """The rows with their pickup and dropoff times ``seconds`` later (a distinct copy, in
    the same months: the batch's time range, and so prep's work per row, stay the same)."""
    import datetime as dt

    step, fmt = dt.timedelta(seconds=seconds), "%Y-%m-%d %H:%M:%S"
    out = []
    for line in lines:
        vendor, pickup, dropoff, rest = line.split(",", 3)
        try:
            pickup = (dt.datetime.strptime(pickup, fmt) + step).strftime(fmt)
            dropoff = (dt.datetime.strptime(dropoff, fmt) + step).strftime(fmt)
        except ValueError:
            pass  # a row the contract quarantines stays as it is
        out.append(f"{vendor},{pickup},{dropoff},{rest}")
    return out


def build(project: Path, batches: int, months: int, engine: str | None, repeat: int = 1) -> None:
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
        rows = lines[1:]
        for r in range(1, repeat):
            lines += _moved(rows, r)
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


def timed(project: Path, name: str, env: dict[str, str]) -> tuple[float, float]:
    """The pass's wall seconds, and the CPU seconds of its processes (the CLI and every
    process it started and waited for: the flow, the Dask scheduler, nannies, workers)."""
    verb = ["run"] if name == "builtin" else ["prefect", "run"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [*CLI, *verb, "-p", str(project)], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{name}: exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def group_cpu(pgid: int) -> float:
    """CPU seconds so far of the processes in a process group (the Prefect server's)."""
    total = 0
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            fields = (pid / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # pgrp, then utime and stime in clock ticks
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _api(url: str, path: str, body: dict[str, Any]) -> Any:
    import httpx

    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def timeline(url: str, project: Path, workers: int, stage_s: float) -> str:
    """Where the work pass's wall went, from Prefect's API: its task runs' start and end."""
    runs = _api(url, "/flow_runs/filter", {"sort": "START_TIME_ASC"})
    mine = [r for r in runs if r["parameters"].get("project") == str(project.resolve())]
    if not mine or mine[0]["start_time"] is None:
        return "  (no flow run found in the API)"
    flow = mine[0]  # the work pass (the second is the pass with nothing to do)
    body = {"flow_runs": {"id": {"any_": [flow["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}
    tasks = [
        t
        for t in _api(url, "/task_runs/filter", body)
        if t["name"].startswith(("prep ", "features ")) and t["start_time"] and t["end_time"]
    ]
    if not tasks:
        return "  (no task runs found in the API)"
    first = min(_at(t["start_time"]) for t in tasks)
    last = max(_at(t["end_time"]) for t in tasks)
    inside = sum(_at(t["end_time"]) - _at(t["start_time"]) for t in tasks)
    span = last - first
    return (
        f"  task runs: {len(tasks)}, {inside:.2f} s inside them ({inside / len(tasks):.3f} s "
        f"each, of which the stage {stage_s / len(tasks):.3f} s); workers busy "
        f"{inside / max(span * workers, 1e-9):.0%} of the {span:.2f} s from the first task "
        f"run's start to the last one's end; the flow before the first "
        f"{first - _at(flow['start_time']):.2f} s, after the last "
        f"{_at(flow['end_time']) - last:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--months-per-batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="each batch's rows, N copies")
    parser.add_argument("--rounds", type=int, default=1, help="the rows N times, interleaved")
    parser.add_argument("--only", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = parser.parse_args()
    if not TAXI.is_dir():
        raise SystemExit(f"{TAXI} is missing: the benchmark needs the shared datasets")
    root = Path(tempfile.mkdtemp(prefix="driftloop-engines-"))
    server = start_server()
    env = {**os.environ, **server.env, "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    server_group = os.getpgid(server.process.pid)
    runs: dict[str, list[tuple[float, int, float, float]]] = {}
    try:
        for round_ in range(args.rounds):
            for name in args.only:
                project = root / f"{name}-{round_}"
                build(project, args.batches, args.months_per_batch, ENGINES[name], args.repeat)
                load = os.getloadavg()[0]
                served = group_cpu(server_group)
                wall, cpu = timed(project, name, env)
                served = group_cpu(server_group) - served
                calls, seconds = stage_seconds(project)
                idle, idle_cpu = timed(project, name, env)  # nothing to do: fixed costs
                runs.setdefault(name, []).append((wall, calls, seconds, idle))
                print(
                    f"{name:8} wall {wall:7.2f} s  {calls} stage calls, {seconds:7.2f} s in them; "
                    f"a pass with nothing to do {idle:5.2f} s; load {load:.2f} -> "
                    f"{os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)",
                    flush=True,
                )
                cpu_line = (
                    f"  cpu: {cpu:.2f} s in the pass's processes ({idle_cpu:.2f} s with nothing"
                    f" to do), {served:.2f} s in the Prefect server"
                )
                if name != "builtin":
                    workers = 2 if name == "dask2" else 1
                    cpu_line += "\n" + timeline(server.api_url, project, workers, seconds)
                print(cpu_line, flush=True)
                shutil.rmtree(project, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    # the median run of each row (by wall), whole: its idle pass goes with it
    results = {
        name: sorted(found)[len(found) // 2] if len(found) % 2 else _middle(found)
        for name, found in runs.items()
    }
    rows = args.batches * args.months_per_batch * 10_000 * args.repeat
    what = "median of " + str(args.rounds) + " interleaved runs" if args.rounds > 1 else "one run"
    print(f"\n{args.batches} batches, {rows:,} rows, load {os.getloadavg()[0]:.2f} ({what})")
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
        if args.rounds > 1:
            pairs = [
                f"{a[0] / b[0]:.2f}x" for a, b in zip(runs["dask1"], runs["dask2"], strict=False)
            ]
            print(f"  round by round (each pair run back to back): {', '.join(pairs)}")
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


def _middle(found: list[tuple[float, int, float, float]]) -> tuple[float, int, float, float]:
    """Of an even number of runs, the two middle ones averaged (the median)."""
    ordered = sorted(found)
    a, b = ordered[len(found) // 2 - 1], ordered[len(found) // 2]
    return (
        statistics.mean([a[0], b[0]]),
        a[1],
        statistics.mean([a[2], b[2]]),
        statistics.mean([a[3], b[3]]),
    )


if __name__ == "__main__":
    main()
