"""The realized metric's bootstrap interval: the dense row bootstrap (before) against the
sufficient-statistics one (now), side by side in one run.

    .venv/bin/python benchmarks/bootstrap.py [--rows 100000 1000000] [--metrics roc_auc accuracy]
                                             [--old-cap-gib 6]

Each (rows, metric, variant) runs in its own fresh process. The process first builds N
labelled rows of a two-class model (30% positives, a continuous score: every row its own
score, the hardest case for the new code; predictions at 0.5), not timed; then, timed,
computes what ``realized_performance`` computes besides the river detectors: the interval
over all rows and one per window of 1,000 rows, 200 resamples, 95% (the defaults).

- ``old``: the code before this change, verbatim: ``rng.multinomial(n, 1/n, size=200)``, a
  dense resamples x rows weight matrix, scored by ``weighted_metric`` (still in
  performance.py as the row-level reference). It runs under an address-space cap
  (``--old-cap-gib``) so that it cannot take the shared machine down: when it needs more,
  the table says so.
- ``new``: ``performance.realized_performance``'s interval code (monitoring/bootstrap.py).

Peak memory growth is the rise of the process's peak resident set size (VmHWM, reset
through /proc/self/clear_refs just before the timed part) over its resident size then.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WINDOW_ROWS = 1_000
RESAMPLES = 200
CONFIDENCE = 0.95


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


def outcomes(rows: int) -> Any:
    import numpy as np

    from driftloop.monitoring.performance import Outcomes

    rng = np.random.default_rng(rows)
    positive = rng.random(rows) < 0.3
    score = np.clip(rng.normal(0.3 + 0.3 * positive, 0.2), 0.0, 1.0)
    truth = np.where(positive, "yes", "no")
    pred = np.where(score > 0.5, "yes", "no")
    windows = np.arange(rows) // WINDOW_ROWS
    labels = [f"rows {k * WINDOW_ROWS}-" for k in range(int(windows[-1]) + 1)]
    return Outcomes(truth, pred, np.c_[1 - score, score], ["no", "yes"], windows, labels)


def old_interval(metric: str, o: Any, rows: Any, rng: Any) -> tuple[float, float, float]:
    """The interval as performance.metric_with_interval computed it before this change."""
    import math

    import numpy as np

    from driftloop.monitoring.performance import Outcomes, weighted_metric

    n = int(rows.size)
    sub = Outcomes(
        o.y_true[rows], o.y_pred[rows], o.proba[rows], o.classes, o.windows[rows], o.window_labels
    )
    value = float(weighted_metric(metric, sub, np.ones((1, n)))[0])
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES)
    values = np.asarray(weighted_metric(metric, sub, draws), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return value, math.nan, math.nan
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return value, float(low), float(high)


def worker(variant: str, rows: int, metric: str) -> dict[str, Any]:
    import numpy as np

    from driftloop.monitoring.bootstrap import percentile_interval, statistic

    o = outcomes(rows)
    rng = np.random.default_rng(0)
    base = _reset_peak()
    started, cpu = time.perf_counter(), time.process_time()
    windows = int(o.windows[-1]) + 1
    try:
        if variant == "old":
            overall = old_interval(metric, o, np.arange(rows), rng)
            for k in range(windows):
                old_interval(metric, o, np.flatnonzero(o.windows == k), rng)
        else:
            stat = statistic(metric, o)
            overall = percentile_interval(stat, None, RESAMPLES, CONFIDENCE, rng)
            for k in range(windows):
                rows_k = np.flatnonzero(o.windows == k)
                percentile_interval(stat, rows_k, RESAMPLES, CONFIDENCE, rng)
    except MemoryError:
        return {"error": "MemoryError", "peak_growth_mib": (_rss_kib()[1] - base) / 1024}
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_growth_mib": (_rss_kib()[1] - base) / 1024,
        "peak_mib": _rss_kib()[1] / 1024,
        "overall": overall,
        "windows": windows,
    }


def run_child(variant: str, rows: int, metric: str, cap_gib: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def limit() -> None:
        if variant == "old":
            cap = int(cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run(
        [sys.executable, __file__, "--worker", variant, str(rows), metric],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:120]}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--metrics", nargs="+", default=["roc_auc", "accuracy"])
    parser.add_argument("--old-cap-gib", type=float, default=6.0)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, rows, metric = args.worker
        print(json.dumps(worker(variant, int(rows), metric)))
        return
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    print(
        f"{RESAMPLES} resamples, {CONFIDENCE:.0%}, the interval over all rows and per window "
        f"of {WINDOW_ROWS:,} rows; old capped at {args.old_cap_gib:g} GiB of address space"
    )
    results = []
    for rows in args.rows:
        for metric in args.metrics:
            for variant in ("old", "new"):
                load = os.getloadavg()[0]
                r = run_child(variant, rows, metric, args.old_cap_gib)
                results.append((rows, metric, variant, r))
                if "error" in r:
                    print(f"{rows:>9,} {metric:<9} {variant}: {r['error']}, load {load:.1f}")
                    continue
                v, lo, hi = r["overall"]
                print(
                    f"{rows:>9,} {metric:<9} {variant}: {r['wall_s']:7.2f} s wall "
                    f"{r['cpu_s']:7.2f} s cpu {r['peak_growth_mib']:7.0f} MiB peak growth "
                    f"({r['peak_mib']:.0f} MiB peak RSS); value {v:.4f} "
                    f"[{lo:.4f}, {hi:.4f}], load {load:.1f}"
                )
    print()
    print("rows       metric     old s   new s  faster  old cpu s  new cpu s   old MiB  new MiB")
    by = {(rows, m, v): r for rows, m, v, r in results}
    for rows in args.rows:
        for metric in args.metrics:
            old, new = by[(rows, metric, "old")], by[(rows, metric, "new")]
            old_s = f"{old['wall_s']:7.2f}" if "wall_s" in old else "   fail"
            new_s = f"{new['wall_s']:7.2f}" if "wall_s" in new else "   fail"
            faster = (
                f"{old['wall_s'] / new['wall_s']:6.1f}x"
                if "wall_s" in old and "wall_s" in new
                else "     -"
            )
            old_m = (
                f"{old['peak_growth_mib']:8.0f}"
                if "wall_s" in old
                else f"> {args.old_cap_gib:g} GiB"
            )
            new_m = f"{new.get('peak_growth_mib', float('nan')):8.0f}"
            old_c = f"{old['cpu_s']:9.2f}" if "cpu_s" in old else "        -"
            new_c = f"{new['cpu_s']:9.2f}" if "cpu_s" in new else "        -"
            print(
                f"{rows:<10,} {metric:<9} {old_s} {new_s} {faster}  {old_c}  {new_c}  "
                f"{old_m} {new_m}"
            )


if __name__ == "__main__":
    main()
