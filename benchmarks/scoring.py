"""One record through contract, features and model, in process: the row path against Polars.

    .venv/bin/python benchmarks/scoring.py [--rows 5000] [--repeat 2000]

Fits driftloop's default model (histogram gradient boosting, its verified Treelite path) on
``benchmarks/serve.py``'s generated 20-column table, loads it as the server does
(``ServedModel.load``) and times, taking turns in one run so a loaded machine slows each
alike:

- ``row path``: ``ServedModel.score`` on one record (serving/rowpath.py);
- ``polars path``: ``ServedModel.score_frames`` on the same record (the path every batch
  took before, and still takes above ``ROW_LIMIT`` records or when the row path declines);
- ``user function``: the same model with a feature function (Polars code over a frame: no
  row path), through ``score``;
- ``trees only``: Treelite on an already built one-row matrix (the floor).

Each figure is the median over ``--repeat`` single-record calls cycling through 200
different records; the load average is printed beside them. Polars and OpenMP get one thread
each, as in a serving worker (``serving.threads_per_worker: 1``).
"""

from __future__ import annotations

import os

# as a serving worker runs (serving.threads_per_worker: 1), set before Polars is imported
for _name in ("OMP_NUM_THREADS", "POLARS_MAX_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from tests.helpers import write_bare_package  # noqa: E402  (the tests' model package)

from serve import NUMBERS, SPEC, generate  # noqa: E402  (the benchmark's own table)

USER_CODE = """
import polars as pl

def build(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns((pl.col("n00") * 2).alias("n00_twice"))
"""


def served(folder: Path, rows: int, user: bool) -> Any:
    from driftloop.core.spec import parse_spec, read_yaml
    from driftloop.features.compute import build_features, load_user_function
    from driftloop.serving.model import ServedModel
    from driftloop.train.fit import fit

    text = SPEC.replace("{numbers}", "\n".join(f"    {n}: {{dtype: float}}" for n in NUMBERS))
    if user:
        text += "features: {function: 'feats:build'}\n"
        folder.mkdir(parents=True)
        (folder / "feats.py").write_text(USER_CODE)
    spec = parse_spec(read_yaml(text))
    raw = generate(folder / "project", rows)
    typed = raw.with_columns(
        pl.col("ts").str.to_datetime("%Y-%m-%d %H:%M:%S"), pl.col(NUMBERS).fill_nan(None)
    )
    function = load_user_function("feats:build", folder) if user else None
    frame = build_features(typed.lazy(), spec, function).collect()
    trained = fit(frame, spec)
    package = folder / "pkg"
    write_bare_package(package, spec, trained, user_module=folder / "feats.py" if user else None)
    return ServedModel.load(spec.name, "1", package, unknown_category="reject"), raw


def per_call(call: Any, records: list[Any], repeat: int) -> float:
    """Median seconds of one call, cycling through the records (after a warm-up)."""
    for r in records[:20]:
        call(r)
    times = []
    for i in range(repeat):
        r = records[i % len(records)]
        start = time.perf_counter()
        call(r)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    import treelite.gtil

    from driftloop.serving.records import request_records

    work = Path(tempfile.mkdtemp(prefix="driftloop-scoring-"))
    model, raw = served(work / "plain", args.rows, user=False)
    with_user, _ = served(work / "user", args.rows, user=True)
    typed = raw.head(200).with_columns(
        pl.col("ts").str.to_datetime("%Y-%m-%d %H:%M:%S"), pl.col(NUMBERS).fill_nan(None)
    )
    records = model.contract.records(request_records(typed, model.predictor.spec))
    batches = [[r] for r in records]
    assert model.rows is not None, model.info["inference"]
    declined = sum(model.score(b).checked.features is not None for b in batches)
    matrix = [np.asarray([model.rows.row(model.rows.typed(r))]) for r in records]
    forest = model.rows.forest
    print(f"row path: {model.info['inference']['row_path']}; declined {declined} of 200")
    print(f"user function model: {with_user.info['inference']['row_path']}")
    results: dict[str, list[float]] = {k: [] for k in ("row", "polars", "user", "trees")}
    for _ in range(3):  # taking turns: a burst of load hits every variant alike
        results["row"].append(per_call(model.score, batches, args.repeat))
        results["polars"].append(per_call(model.score_frames, batches, args.repeat))
        results["user"].append(per_call(with_user.score, batches, args.repeat))
        results["trees"].append(
            per_call(lambda x: treelite.gtil.predict(forest, x, nthread=1), matrix, args.repeat)
        )
    load = os.getloadavg()[0]
    print(f"cpus {os.cpu_count()}, load {load:.1f}; median of 3 turns x {args.repeat} calls")
    med = {k: statistics.median(v) * 1e3 for k, v in results.items()}
    print(f"  row path       {med['row']:.3f} ms per record")
    print(
        f"  polars path    {med['polars']:.3f} ms per record  ({med['polars'] / med['row']:.1f}x)"
    )
    print(f"  user function  {med['user']:.3f} ms per record  (Polars: no row path)")
    print(f"  trees only     {med['trees']:.3f} ms per record")
    print(f"target <= 0.3 ms per record: {'met' if med['row'] <= 0.3 else 'NOT met'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
