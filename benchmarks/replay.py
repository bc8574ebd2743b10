"""Adaptation quality: ``driftloop replay`` on elec2 and bike sharing, three policies each.

    .venv/bin/python benchmarks/replay.py [--datasets elec2 bike] [--out DIR]
        [--refit-on-all true|false] [--policies static every_batch triggered] [--head N]

elec2 (the classic concept-drift stream): an initial window of 4 weeks (1,344 rows), then
weekly batches of 336 rows in row order. Bike sharing (hourly): 2011 as the initial window,
then 2012 month by month. Each batch is scored by the champion of the moment before the
loop learns from it (prequential). Prints each policy's row-weighted metric and retrain
count, and checks the targets: on elec2 the triggered policy beats the static model by at
least 10 accuracy points, and reaches at least 95% of retrain-every-batch's accuracy with
at most a third of its retrains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("DRIFTLOOP_SHARED_DATA", HERE.parent.parent / "shared" / "datasets"))

ELEC2 = """
name: elec2
task: classification
target: class
sources: [{name: electricity, path: data/raw/electricity/*.csv}]
contract:
  columns:
    date: {dtype: float}
    day: {dtype: int, min: 1, max: 7}
    period: {dtype: float, min: 0, max: 1}
    nswprice: {dtype: float}
    nswdemand: {dtype: float}
    vicprice: {dtype: float}
    vicdemand: {dtype: float}
    transfer: {dtype: float}
    class: {dtype: str, allowed: [DOWN, UP], nullable: false}
cleaning: {deduplicate: {enabled: false}}   # a stream: repeated rows are real observations
features: {exclude: [date]}                  # a normalized timestamp says only when
model:
  metric: accuracy
  split: arrival
  window: {kind: last_rows, size: 4032}      # the last 12 weeks
monitoring:
  permutations: 199
  performance: {tolerance: 0.05, window_rows: 336}
retrain: {on_drift: false, on_decay: true}   # the price-driven features drift all the time
"""

BIKE = """
name: bike
task: regression
target: cnt
time_column: dteday
sources: [{name: hours, path: data/raw/hours/*.csv}]
contract:
  columns:
    instant: {dtype: int, nullable: false}
    dteday: {dtype: date, format: "%Y-%m-%d", nullable: false}
    season: {dtype: int, allowed: [1, 2, 3, 4]}
    yr: {dtype: int, allowed: [0, 1]}
    mnth: {dtype: int, min: 1, max: 12}
    hr: {dtype: int, min: 0, max: 23}
    holiday: {dtype: int, allowed: [0, 1]}
    weekday: {dtype: int, min: 0, max: 6}
    workingday: {dtype: int, allowed: [0, 1]}
    weathersit: {dtype: int, min: 1, max: 4}
    temp: {dtype: float, min: 0, max: 1}
    atemp: {dtype: float, min: 0, max: 1}
    hum: {dtype: float, min: 0, max: 1}
    windspeed: {dtype: float, min: 0, max: 1}
    casual: {dtype: int, min: 0}
    registered: {dtype: int, min: 0}
    cnt: {dtype: int, min: 0, nullable: false}
features:
  exclude: [instant, casual, registered]   # an id that leaks time; cnt = casual + registered
model: {split: time}
monitoring:
  permutations: 199
  performance: {tolerance: 0.15}           # rmse: relative, 15% above the holdout's
retrain: {on_drift: false, on_decay: true}  # 2012 drifts from 2011 every month (growth)
"""

CASES = {
    "elec2": (ELEC2, "elec2/electricity.csv", {"batch_size": 336, "initial": 1344}),
    "bike": (BIKE, "bike_sharing/hour.csv", {"by": "month", "initial_periods": 12}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--refit-on-all",
        choices=["true", "false"],
        default="true",
        help="model.refit_on_all in both specs (false: serve the model fitted without the "
        "holdout, as before 0.2)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["static", "every_batch", "triggered"],
        help="a subset of the three policies",
    )
    parser.add_argument(
        "--head",
        type=int,
        default=None,
        help="replay only the first N rows of each dataset (a slice, for a busy machine)",
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the shared datasets are needed")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import yaml

    from driftloop.orchestration.replay import replay

    out = args.out or Path(tempfile.mkdtemp(prefix="driftloop-replay-"))
    results = {}
    for name in args.datasets:
        spec, data, cut = CASES[name]
        project = out / name / "project"
        project.mkdir(parents=True, exist_ok=True)
        doc = yaml.safe_load(spec)
        doc["model"]["refit_on_all"] = args.refit_on_all == "true"
        (project / "driftloop.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        source = SHARED / data
        if args.head is not None:
            import polars as pl

            source = out / name / f"head-{args.head}-{source.name}"
            sliced = pl.read_csv(SHARED / data, infer_schema=False, n_rows=args.head)
            sliced.write_csv(source)
        started = time.perf_counter()
        result = replay(
            project,
            source,
            out=out / name / "replay",
            policies=tuple(args.policies),
            **cut,  # type: ignore[arg-type]
        )
        results[name] = result.summary
        print(
            f"{name}: {time.perf_counter() - started:.0f}s, report {result.folder / 'replay.html'}"
        )
        for policy, s in result.summary.items():
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items() if v is not None)
            print(f"  {policy:<12} retrains {s['retrains']:>4}  {metrics}")
    if "elec2" in results and len(results["elec2"]) == 3:  # the targets need every policy
        e = results["elec2"]
        acc = {p: e[p]["metrics"]["accuracy"] for p in e}
        gain = acc["triggered"] - acc["static"]
        share = acc["triggered"] / acc["every_batch"]
        retrains = e["triggered"]["retrains"] / max(1, e["every_batch"]["retrains"])
        print(
            f"elec2 targets: triggered vs static {gain * 100:+.1f} accuracy points "
            f"({'met' if gain >= 0.10 else 'NOT met'}, >= +10); "
            f"{share:.1%} of every-batch accuracy ({'met' if share >= 0.95 else 'NOT met'}, "
            f">= 95%) with {retrains:.0%} of its retrains "
            f"({'met' if retrains <= 1 / 3 else 'NOT met'}, <= 33%)"
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
