"""Data drift: Evidently's DataDriftPreset against driftloop's monitor, side by side.

    .venv/bin/python benchmarks/drift.py [--rows 100000 1000000] [--repeat 1]

Generates (once, cached in benchmarks/.data/) a reference and a current frame of N rows x
20 columns (15 numeric: normal, lognormal, exponential, uniform, counts, mixtures, ~1%
missing in some; 5 categorical text columns of 3 to 200 values), with a shift in about half
of the columns of the current frame. Evidently cannot be imported next to pandas 3 (the
project's), so this script creates its own virtualenv for it under benchmarks/.data/
(evidently from the package index, pandas < 3) the first time it runs.

Each engine runs in its own fresh process that first loads both frames from Parquet (not
timed), then, timed:

- evidently: ``Report([DataDriftPreset()]).run(current, reference)`` with a DataDefinition
  naming the 15 numeric and 5 categorical columns (its automatic test choice: Wasserstein
  for numbers, Jensen-Shannon for categories at these sizes);
- driftloop: ``Reference.read(reference_columns.parquet)`` and ``data_drift`` with the
  default monitoring settings (the same automatic choice, plus the sample-size-aware
  decision with 500 permutations per column), on both cores. The reference columns file is
  what training stores with every model (profile.py): it is built before the timed part,
  as training does, and its build time is printed separately.

Peak memory growth is the rise of the process's peak resident set size (VmHWM, reset through
/proc/self/clear_refs just before the timed part) over its resident size at that moment.
Per-column values are compared: relative difference |a - b| / |b|.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
EVIDENTLY_VENV = DATA / "evidently-venv"
EVIDENTLY_PIN = "evidently==0.7.23"  # the version the rough figures used
NUMERIC = [f"n{i:02d}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]
CATEGORIES = [3, 8, 20, 50, 200]


def generate(rows: int) -> tuple[Path, Path]:
    """Reference and current Parquet files of ``rows`` rows (cached)."""
    import numpy as np
    import polars as pl

    ref_path, cur_path = (
        DATA / f"drift-{rows}-reference.parquet",
        DATA / f"drift-{rows}-current.parquet",
    )
    if ref_path.exists() and cur_path.exists():
        return ref_path, cur_path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)

    def frame(shifted: bool) -> pl.DataFrame:
        cols: dict[str, Any] = {}
        for i, name in enumerate(NUMERIC):
            move = shifted and i % 2 == 0
            kind = i % 5
            if kind == 0:
                x = rng.normal(0.3 * move, 1.0, rows)
            elif kind == 1:
                x = rng.lognormal(0.0, 1.0 + 0.3 * move, rows)
            elif kind == 2:
                x = rng.exponential(1.0 + 0.5 * move, rows)
            elif kind == 3:
                x = rng.uniform(0.0, 1.0 + 0.2 * move, rows)
            else:
                x = rng.poisson(4.0 + 1.0 * move, rows).astype(float)
            if i % 4 == 1:
                x[rng.random(rows) < 0.01] = np.nan
            cols[name] = x
        for j, name in enumerate(CATEGORICAL):
            k = CATEGORIES[j]
            p = np.random.default_rng(j).dirichlet(np.ones(k))
            if shifted and j % 2 == 0:
                p = 0.7 * p + 0.3 * np.random.default_rng(100 + j).dirichlet(np.ones(k))
            values = np.array([f"{name}_{v}" for v in range(k)], dtype=object)
            cols[name] = values[rng.choice(k, size=rows, p=p)]
        return pl.DataFrame(cols)

    frame(False).write_parquet(ref_path)
    frame(True).write_parquet(cur_path)
    return ref_path, cur_path


# ---- workers (each runs in its own process) ------------------------------------------------


def _rss_kib() -> tuple[int, int]:
    """(current resident KiB, peak resident KiB) from /proc/self/status."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found["VmRSS"], found["VmHWM"]


def _reset_peak() -> int:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _rss_kib()[0]


def worker_evidently(rows: int) -> dict[str, Any]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_path, cur_path = (
        DATA / f"drift-{rows}-reference.parquet",
        DATA / f"drift-{rows}-current.parquet",
    )
    reference, current = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    base = _reset_peak()
    started = time.perf_counter()
    result = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    payload = result.dict()
    wall = time.perf_counter() - started
    peak = _rss_kib()[1]
    values, tests, count = {}, {}, None
    for metric in payload["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            values[config["column"]] = metric["value"]
            tests[config["column"]] = config["method"]
        elif config["type"].endswith("DriftedColumnsCount"):
            count = metric["value"]
    return {
        "wall_s": wall,
        "peak_growth_mib": (peak - base) / 1024,
        "values": values,
        "tests": tests,
        "drifted": count,
    }


def worker_driftloop(rows: int) -> dict[str, Any]:
    import tempfile

    import polars as pl

    from driftloop.core.spec import MonitoringSpec
    from driftloop.models.profile import reference_columns, write_monitoring_frame
    from driftloop.monitoring.drift import data_drift
    from driftloop.monitoring.reference import Reference

    ref_path, cur_path = (
        DATA / f"drift-{rows}-reference.parquet",
        DATA / f"drift-{rows}-current.parquet",
    )
    reference, current = pl.read_parquet(ref_path), pl.read_parquet(cur_path)
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(tmp) / "reference_columns.parquet"
        started = time.perf_counter()
        write_monitoring_frame(reference_columns(reference), stored)  # at training time
        profile_s = time.perf_counter() - started
        del reference
        base = _reset_peak()
        started = time.perf_counter()
        report = data_drift(Reference.read(stored), current, MonitoringSpec())
        wall = time.perf_counter() - started
        peak = _rss_kib()[1]
    return {
        "wall_s": wall,
        "peak_growth_mib": (peak - base) / 1024,
        "profile_s": profile_s,
        "values": {c.column: c.value for c in report.columns},
        "tests": {c.column: c.test_name for c in report.columns},
        "fixed_threshold_drifted": sum(bool(c.value_drift) for c in report.columns),
        "drifted": len(report.drifted),
    }


# ---- driver ------------------------------------------------------------------------------


def ensure_evidently() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    probe = [str(python), "-c", "import evidently, pandas; print(evidently.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    print(f"creating {EVIDENTLY_VENV} with {EVIDENTLY_PIN} and pandas<3 (first run only) ...")
    subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", EVIDENTLY_PIN, "pandas<3", "pyarrow"],
        check=True,
    )
    return python


def run_worker(python: Path, engine: str, rows: int) -> dict[str, Any]:
    env = dict(os.environ)
    if engine == "evidently":
        env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(python), __file__, "--worker", engine, "--rows", str(rows)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(f"{engine} worker failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def agreement(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for column, value in theirs.items():
        mine = ours[column]
        rel = abs(mine - value) / abs(value) if value else abs(mine - value)
        if rel >= worst:
            worst, where = rel, column
    return worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per engine")
    parser.add_argument("--worker", choices=["evidently", "driftloop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = worker_evidently if args.worker == "evidently" else worker_driftloop
        print(json.dumps(work(args.rows[0])))
        return
    evidently_python = ensure_evidently()
    import numpy as np

    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, numpy {np.__version__}")
    for rows in args.rows:
        generate(rows)
        runs: dict[str, dict[str, Any]] = {}
        for engine, python in (
            ("evidently", evidently_python),
            ("driftloop", Path(sys.executable)),
        ):
            best = None
            for _ in range(args.repeat):
                result = run_worker(python, engine, rows)
                if best is None or result["wall_s"] < best["wall_s"]:
                    best = result
            assert best is not None
            runs[engine] = best
        ev, dl = runs["evidently"], runs["driftloop"]
        worst, where = agreement(dl["values"], ev["values"])
        same_tests = all(dl["tests"][c] == ev["tests"][c] for c in ev["tests"])
        speed = ev["wall_s"] / dl["wall_s"]
        memory = dl["peak_growth_mib"] / max(ev["peak_growth_mib"], 1e-9)
        print(f"\n{rows:,} rows x 20 columns (15 numeric, 5 categorical), reference and current")
        print(f"{'engine':<11}{'wall s':>9}{'peak growth MiB':>17}{'drifted':>9}")
        print(
            f"{'evidently':<11}{ev['wall_s']:>9.2f}{ev['peak_growth_mib']:>17.0f}"
            f"{int(ev['drifted']['count']) if ev['drifted'] else -1:>9}"
        )
        print(
            f"{'driftloop':<11}{dl['wall_s']:>9.2f}{dl['peak_growth_mib']:>17.0f}"
            f"{dl['fixed_threshold_drifted']:>9}  (fixed thresholds; sample-size-aware: "
            f"{dl['drifted']})"
        )
        print(f"driftloop reference columns, built once at training time: {dl['profile_s']:.2f} s")
        print(f"driftloop vs evidently: {speed:.1f}x faster, {memory:.3f}x the peak memory growth")
        print(
            f"same test per column: {'yes' if same_tests else 'NO'}; largest relative "
            f"difference of a value: {worst:.2e} ({where})"
        )
        for column in NUMERIC + CATEGORICAL:
            print(
                f"  {column:<5} {ev['tests'][column]:<30} evidently {ev['values'][column]:.12g}"
                f"  driftloop {dl['values'][column]:.12g}"
            )
        if rows >= 1_000_000:
            print(
                f"targets at 1M rows: >= 40x faster ({'met' if speed >= 40 else 'NOT met'}), "
                f"<= 1/8 of the memory growth ({'met' if memory <= 0.125 else 'NOT met'}), "
                f"values within 1e-6 ({'met' if worst <= 1e-6 else 'NOT met'})"
            )


if __name__ == "__main__":
    main()
