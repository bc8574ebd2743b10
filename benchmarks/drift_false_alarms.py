"""False alarms of the drift decision: random splits of one sample, where nothing drifted.

    .venv/bin/python benchmarks/drift_false_alarms.py [--splits 200]

For each current-window size, draws ``--splits`` random splits of the bike-sharing 2011
hourly rows (../shared/datasets, 14 columns once ``instant``, ``dteday`` and ``yr`` are
dropped): a reference of 2,000 rows and a disjoint current window. Any alarm is false by
construction. Prints the share of column tests that alarmed under driftloop's
sample-size-aware decision and under the fixed thresholds (Evidently's rule on the same
values), and the share of splits flagged as dataset drift.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from driftloop.core.spec import MonitoringSpec
from driftloop.monitoring.drift import data_drift
from driftloop.monitoring.reference import Reference

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--reference", type=int, default=2_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1_000, 5_000])
    args = parser.parse_args()
    bike = pl.read_csv(SHARED / "bike_sharing" / "hour.csv")
    year = bike.filter(pl.col("yr") == 0).drop("instant", "dteday", "yr")
    settings = MonitoringSpec(permutations=199)
    print(
        f"bike_sharing 2011: {year.height} rows x {year.width} columns; reference "
        f"{args.reference} rows; {args.splits} random splits per size; alpha {settings.alpha}"
    )
    print(f"{'current rows':>12} {'tests':>6} {'driftloop':>10} {'fixed':>8} {'dataset':>8}")
    for size in args.sizes:
        size = min(size, year.height - args.reference)
        rng = np.random.default_rng(size)
        ours = fixed = tests = datasets = 0
        for split in range(args.splits):
            rows = rng.choice(year.height, size=args.reference + size, replace=False)
            reference = Reference.from_frame(year[rows[: args.reference]])
            report = data_drift(reference, year[rows[args.reference :]], settings, seed=split)
            tests += len(report.columns)
            ours += sum(c.drift for c in report.columns)
            fixed += sum(bool(c.value_drift) for c in report.columns)
            datasets += report.dataset_drift
        print(
            f"{size:>12} {tests:>6} {ours / tests:>10.4f} {fixed / tests:>8.4f} "
            f"{datasets / args.splits:>8.4f}"
        )


if __name__ == "__main__":
    main()
