"""A pass's cost against the project's history: 100, 1,000 and 10,000 batches.

    .venv/bin/python benchmarks/history.py [--sizes 100 1000 10000] [--runs 5]
                                           [--variants plain model] [--rebuild]

Times the real CLI, ``driftloop run -p PROJECT`` in a fresh process (so start-up is
included), on projects that already hold N batches of history:

- a no-op pass (nothing new landed): the target is at most 0.5 s at 10,000 batches, and
  within 1.2x of the same pass at 100 batches;
- a pass with one new small batch (ingest, prep and features of that batch, and for the
  model variant its check against the champion): within 1.2x from 100 to 10,000 batches.

The anchors, run in the same rounds: the same measurement at 100 batches, and
``python -c 'import driftloop.cli'`` (the floor of any CLI call).

How a project is built, fast (one CLI call per batch would take hours at 10,000):

1. a template project gets its first three batches from the real code (``driftloop.run``,
   one file landing per pass): real raw files, outputs, manifests, state database, and for
   the model variant a real trained, registered and promoted v1 and real checks of the
   later batches against it;
2. the rest of the history is written the way the stages write it, from those real
   outputs: per batch a distinct 100-row CSV (its ledger row, sighting and
   ``DataArrived`` event), ``data/processed/<batch>`` and ``data/features/<batch>`` with
   ``manifest.json`` and ``_SUCCESS`` (the manifests are the template's with this batch's
   ids, inputs and run keys; the data files are the template batch's, the same row count:
   a pass that has nothing to do never reads them), the stage runs and their events; for
   the model variant also each batch's check (``data/monitoring/batches/<batch>``, no
   drift found). The run keys are computed as the stages compute them, and checked against
   the keys the real code wrote for the template's batches: if the stages change how they
   key a run, the build stops instead of timing passes that redo everything.

Every timed no-op pass is checked to be one: it exits 0, says "nothing to do" and adds no
stage run to the state database. The new-batch pass is checked to ingest one file and
prepare it.

The variants: ``plain`` has ``model.enabled: false`` (ingest, prep and features only: the
orchestration's own cost, and the one the targets are about); ``model`` has one trained
version and ``retrain.every_batches: 0`` (new data alone never retrains; the checks of the
new batches found no drift), so history accumulates behind a champion, as in a project
that retrains on drift only. Projects are kept in benchmarks/.data/history/ and reused
(``--rebuild`` builds them again).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data" / "history"
BUILD_VERSION = "1"  # bump when the way projects are built changes
ROWS = 100  # rows per batch
TEMPLATE_BATCHES = 3
CHANNELS = ["web", "app", "store", "phone"]

SPEC = """
name: history
task: classification
target: y
time_column: ts
sources: [{{name: events, path: data/raw/events/*.csv}}]
contract:
  columns:
    ts: {{dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}}
    amount: {{dtype: float, min: 0}}
    quantity: {{dtype: int, min: 0}}
    channel: {{dtype: str, allowed: [web, app, store, phone]}}
    y: {{dtype: str, allowed: ["no", "yes"], nullable: false}}
features:
  datetime_parts: {{ts: [hour, weekday]}}
  logs: [amount]
ingest: {{settle_seconds: 0, batch_window_seconds: 0}}
model:
  enabled: {enabled}
  estimator: logistic_regression
  min_rows: 20
retrain: {{every_batches: 0}}
monitoring: {{permutations: 99, schedule_minutes: null}}
"""

# How the stages key a run (checked against the template's real keys before use).
PREP_SECTIONS = (
    *("sources", "contract", "cleaning", "quarantine"),
    *("target", "time_column", "id_column"),
)
FEATURES_SECTIONS = ("features", "target", "time_column", "id_column")
MONITOR_SECTIONS = ("monitoring", "target", "task", "model")


def run_key(stage: str, spec_hash: str, inputs: list[str]) -> str:
    text = json.dumps([stage, "1", spec_hash, sorted(inputs)])
    return hashlib.sha256(text.encode()).hexdigest()


def batch_frame(index: int) -> pl.DataFrame:
    """One batch's rows: a distinct, valid 100-row CSV per index."""
    rng = np.random.default_rng(index)
    start = datetime(2025, 1, 1) + timedelta(hours=index)
    amount = rng.gamma(2.0, 20.0, ROWS).round(2)
    return pl.DataFrame(
        {
            "ts": [
                (start + timedelta(seconds=30 * i)).strftime("%Y-%m-%d %H:%M:%S")
                for i in range(ROWS)
            ],
            "amount": amount,
            "quantity": rng.integers(1, 9, ROWS),
            "channel": rng.choice(CHANNELS, ROWS),
            "y": np.where(rng.random(ROWS) < 1 / (1 + np.exp(-(amount - 40) / 20)), "yes", "no"),
        }
    )


def write_csv(project: Path, index: int) -> Path:
    folder = project / "data" / "raw" / "events"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-{index:06d}.csv"
    batch_frame(index).write_csv(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def seal(folder: Path, manifest: dict[str, Any], data: Path | None) -> None:
    folder.mkdir(parents=True)
    if data is not None:
        shutil.copyfile(data, folder / data.name)
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    (folder / "manifest.json").write_text(text + "\n", encoding="utf-8")
    (folder / "_SUCCESS").write_text("", encoding="utf-8")


def build_template(project: Path, model: bool) -> None:
    import driftloop

    project.mkdir(parents=True)
    (project / "driftloop.yaml").write_text(
        SPEC.format(enabled="true" if model else "false"), encoding="utf-8"
    )
    for index in range(TEMPLATE_BATCHES):
        write_csv(project, index)
        result = driftloop.run(project)
        if result.ingest.batch is None or result.failed:
            raise SystemExit(f"template pass {index + 1} did not run cleanly: {result.failed}")


def build(project: Path, size: int, model: bool) -> None:
    """A project with ``size`` batches (see the module docstring)."""
    import driftloop

    started = time.perf_counter()
    shutil.rmtree(project, ignore_errors=True)
    build_template(project, model)
    spec = driftloop.load_spec(project)
    prep_hash = spec.section_hash(*PREP_SECTIONS)
    features_hash = spec.section_hash(*FEATURES_SECTIONS)
    monitor_hash = spec.section_hash(*MONITOR_SECTIONS)
    db = sqlite3.connect(project / ".driftloop" / "state.db", isolation_level=None)
    batches = db.execute("SELECT batch_id, seq, created_at FROM batches ORDER BY seq").fetchall()
    last_id, last_seq, last_created = batches[-1]
    data = project / "data"
    processed = read_json(data / "processed" / last_id / "manifest.json")
    features = read_json(data / "features" / last_id / "manifest.json")
    monitor_dir = data / "monitoring" / "batches" / last_id
    monitor = read_json(monitor_dir / "manifest.json") if model else None
    for batch_id, _, _ in batches:  # the key formulas, checked on what the real code wrote
        p = read_json(data / "processed" / batch_id / "manifest.json")
        f = read_json(data / "features" / batch_id / "manifest.json")
        shas = [f"{e['source']}:{e['sha256']}" for e in p["inputs"]]
        if p["run_key"] != run_key("prep", prep_hash, shas) or f["run_key"] != run_key(
            "features", features_hash, [p["run_key"]]
        ):
            raise SystemExit("the stages key their runs differently now: update this script")
    if model:
        champion = str(monitor["champion_version"]) if monitor else None
        want = run_key("monitor", monitor_hash, [features["run_key"], f"champion={champion}"])
        if monitor is None or monitor["run_key"] != want:
            raise SystemExit("the monitor stage keys its runs differently now: update this script")
    created0 = datetime.fromisoformat(last_created)
    rows: dict[str, list[tuple[Any, ...]]] = {
        k: [] for k in ("raw_files", "sightings", "batches", "stage_runs", "events")
    }
    for index in range(TEMPLATE_BATCHES, size):
        path = write_csv(project, index)
        sha, st = sha256(path), path.stat()
        rel = path.relative_to(project).as_posix()
        created = (created0 + timedelta(milliseconds=index)).isoformat()
        batch_id = f"{created0 + timedelta(milliseconds=index):%Y%m%dT%H%M%S}-{sha[:8]}"
        seq = last_seq + index - TEMPLATE_BATCHES + 1
        rows["raw_files"].append((sha, "events", rel, st.st_size, batch_id, created))
        rows["sightings"].append((rel, st.st_size, st.st_mtime_ns, sha, created))
        rows["batches"].append((batch_id, seq, created))
        files = [{"path": rel, "sha256": sha}]
        rows["events"].append((created, "DataArrived", {"batch_id": batch_id, "files": files}))
        prep_key = run_key("prep", prep_hash, [f"events:{sha}"])
        features_key = run_key("features", features_hash, [prep_key])
        outputs = []
        m = dict(processed, batch_id=batch_id, run_key=prep_key)
        m["inputs"] = [dict(processed["inputs"][0], path=rel, sha256=sha, rows=ROWS)]
        seal(data / "processed" / batch_id, m, data / "processed" / last_id / "data.parquet")
        outputs.append(("prep", prep_key, f"data/processed/{batch_id}"))
        m = dict(features, batch_id=batch_id, run_key=features_key)
        m["inputs"] = [{"path": f"data/processed/{batch_id}/manifest.json", "run_key": prep_key}]
        seal(data / "features" / batch_id, m, data / "features" / last_id / "data.parquet")
        outputs.append(("features", features_key, f"data/features/{batch_id}"))
        if model and monitor is not None:
            key = run_key(
                "monitor", monitor_hash, [features_key, f"champion={monitor['champion_version']}"]
            )
            seal(
                data / "monitoring" / "batches" / batch_id,
                dict(monitor, batch_id=batch_id, run_key=key),
                None,
            )
            outputs.append(("monitor", key, f"data/monitoring/batches/{batch_id}"))
        for stage, key, output in outputs:
            rows["stage_runs"].append(
                (key, stage, batch_id, "succeeded", 1, created, created, 0.01, output, None)
            )
            payload = {"stage": stage, "batch_id": batch_id, "key": key}
            rows["events"].append((created, "StageStarted", payload))
            rows["events"].append((created, "StageSucceeded", dict(payload, output=output)))
    with contextlib.closing(db):
        db.execute("BEGIN")
        for table in ("raw_files", "sightings", "batches", "stage_runs"):
            marks = ",".join("?" * len(rows[table][0])) if rows[table] else ""
            if marks:
                db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows[table])
        db.executemany(
            "INSERT INTO events (ts, type, payload) VALUES (?,?,?)",
            [(ts, t, json.dumps(p, sort_keys=True)) for ts, t, p in rows["events"]],
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (project / ".bench-built").write_text(BUILD_VERSION, encoding="utf-8")
    print(f"  built {project.name}: {size} batches in {time.perf_counter() - started:.1f}s")


def stage_runs(project: Path) -> int:
    with contextlib.closing(sqlite3.connect(project / ".driftloop" / "state.db")) as db:
        return int(db.execute("SELECT COUNT(*) FROM stage_runs").fetchone()[0])


def cli() -> str:
    return str(Path(sys.executable).with_name("driftloop"))


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


def noop(project: Path) -> float:
    before = stage_runs(project)
    seconds, done = timed([cli(), "run", "-p", str(project)])
    if done.returncode != 0 or "nothing to do" not in done.stdout or stage_runs(project) != before:
        raise SystemExit(f"{project.name}: not a no-op pass:\n{done.stdout}{done.stderr}")
    return seconds


def one_new_batch(project: Path) -> float:
    landed = project / "data" / "raw" / "events"
    write_csv(project, 1 + max(int(p.stem.split("-")[1]) for p in landed.glob("events-*.csv")))
    seconds, done = timed([cli(), "run", "-p", str(project)])
    if done.returncode != 0 or "ingested 1 new file(s) as batch" not in done.stdout:
        raise SystemExit(f"{project.name}: the new batch did not go through:\n{done.stdout}")
    return seconds


def prepare(variant: str, size: int, rebuild: bool) -> Path:
    project = DATA / f"{variant}-{size}"
    stamp = project / ".bench-built"
    if rebuild or not stamp.is_file() or stamp.read_text(encoding="utf-8") != BUILD_VERSION:
        build(project, size, model=variant == "model")
    started = time.perf_counter()
    # warm-up (the page cache; a pass may record facts on its first run, or finish work a
    # project built by an older version left): passes until one has nothing to do
    for _ in range(3):
        done = subprocess.run([cli(), "run", "-p", str(project)], capture_output=True, text=True)
        if done.returncode == 0 and "nothing to do" in done.stdout:
            break
    noop(project)
    print(f"  {project.name}: warm-up passes {time.perf_counter() - started:.2f}s")
    return project


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--variants", nargs="+", default=["plain", "model"])
    parser.add_argument("--runs", type=int, default=5, help="alternated rounds; medians shown")
    parser.add_argument("--rebuild", action="store_true", help="build the projects again")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))
    with contextlib.suppress(OSError):
        print(f"load average as it began: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"building or reusing projects in {DATA.relative_to(HERE.parent)}/")
    projects = {(v, n): prepare(v, n, args.rebuild) for v in args.variants for n in sizes}
    import_cli = [sys.executable, "-c", "import driftloop.cli"]
    times: dict[tuple[str, int | str, str], list[float]] = {}
    for round_ in range(args.runs):
        times.setdefault(("anchor", "import", "cli"), []).append(timed(import_cli)[0])
        for (variant, size), project in projects.items():
            times.setdefault((variant, size, "noop"), []).append(noop(project))
            times.setdefault((variant, size, "new"), []).append(one_new_batch(project))
        print(f"  round {round_ + 1} of {args.runs} done")
    startup = median(times[("anchor", "import", "cli")])
    print(f"\nanchor: python -c 'import driftloop.cli': {startup:.3f} s (median of {args.runs})")
    print(f"{'variant':<8}{'batches':>9}{'no-op s':>10}{'new batch s':>13}")
    for variant, size in projects:
        a, b = median(times[(variant, size, "noop")]), median(times[(variant, size, "new")])
        print(f"{variant:<8}{size:>9,}{a:>10.3f}{b:>13.3f}")
    low, high = sizes[0], sizes[-1]
    if low == high:
        return
    print(f"\nratios {high:,} vs {low:,} batches (target <= 1.2x; no-op <= 0.5 s at {high:,}):")
    for variant in args.variants:
        n_hi, n_lo = median(times[(variant, high, "noop")]), median(times[(variant, low, "noop")])
        b_hi, b_lo = median(times[(variant, high, "new")]), median(times[(variant, low, "new")])
        met = "met" if n_hi <= 0.5 and n_hi / n_lo <= 1.2 and b_hi / b_lo <= 1.2 else "not met"
        print(
            f"{variant:<8} no-op {n_hi / n_lo:.2f}x ({n_hi:.3f} s at {high:,}), "
            f"new batch {b_hi / b_lo:.2f}x: {met}"
        )


if __name__ == "__main__":
    main()
