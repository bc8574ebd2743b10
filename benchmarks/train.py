"""The train stage against the bare fit of the same model: time, each part, and peak memory.

    .venv/bin/python benchmarks/train.py [--tables serve,latency,bank] [--runs 2]

For each table a project is made and taken through ingest, prep and features once; then,
taking turns in one run (so a burst of load hits both alike), each in its own fresh process:

- ``bare fit``: what a user would write by hand: the same prepared table (the features
  the stage reads, the same rows and input columns), the same scikit-learn pipeline
  (``train.fit.build_pipeline``: same estimator, same parameters, same seed) fitted once on
  every labelled row. Timed: the ``fit`` call alone.
- ``train stage``: ``driftloop stage train`` on a fresh copy of the project (its own MLflow
  store: a new version each run). Timed: the stage's own time (the manifest's
  ``timings.total_s``: read, fit, score, profile, package, register, cache, compile), each
  part of it (the manifest's other ``timings``), and the command's wall time (with the
  interpreter's start and imports).
- ``warm stage``: the same stage as ``driftloop watch`` and ``up`` run it after their first
  training: in one process, the stage trains a copy of the project (paying for the
  imports of scikit-learn, MLflow and the rest, about 3-4 s), then a second copy, which is
  the one timed. The bare fit is timed after its imports too, so this is the like-for-like
  figure; the cold command (one process per training, as a Step Functions or Airflow task
  runs it) is compared with the bare fit's whole process, imports included.

Peak memory is each process's peak resident set size from the kernel (``wait4``), beside an
``interpreter`` process that imports what the stage imports and does nothing else. The
model's own footprint is the bare fit's peak minus an interpreter that imports what the bare
fit imports. Targets (issue 17): stage <= 1.5 x bare fit + 1 s (the warm stage against the
bare fit; the cold command against the bare fit's process, both with their imports); stage
peak <= interpreter + 1.5 x the model's footprint.

Tables: ``serve``: ``benchmarks/serve.py``'s generated 20-column table (26,000 rows by
default, the size of the first report); ``latency``: ``benchmarks/latency.py``'s 100,000-row
file; ``bank``: the bank marketing dataset (41,188 rows, read in place from the shared
datasets folder; ``DRIFTLOOP_SHARED_DATA`` names it; skipped with a note when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("DRIFTLOOP_SHARED_DATA", REPO.parent / "shared" / "datasets"))


def make_project(table: str, folder: Path, rows: int, refit: bool = True) -> Path | None:
    """A project with the table's raw file and its features computed (no model yet)."""
    sys.path.insert(0, str(HERE))
    project = folder / table
    project.mkdir(parents=True)
    if table == "serve":
        from serve import NUMBERS, SPEC, generate

        spec = SPEC.replace("{numbers}", "\n".join(f"    {n}: {{dtype: float}}" for n in NUMBERS))
        generate(project, rows)
    elif table == "latency":
        from latency import NUMBERS as LNUMBERS
        from latency import SPEC as LSPEC
        from latency import batch

        spec = LSPEC.format(
            numbers="\n".join(f"    {n}: {{dtype: float}}" for n in LNUMBERS), rows=100_000
        )
        raw = project / "data" / "raw" / "events"
        raw.mkdir(parents=True)
        batch(100_000, 0, seed=0).write_csv(raw / "events.csv")
    else:
        source = SHARED / "bank_marketing" / "bank-additional-full.csv"
        if not source.is_file():
            print(f"bank: {source} not found (set DRIFTLOOP_SHARED_DATA); skipped")
            return None
        sys.path.insert(0, str(REPO))
        from tests.helpers import BANK_SPEC

        spec = BANK_SPEC
        raw = project / "data" / "raw" / "bank"
        raw.mkdir(parents=True)
        (raw / source.name).symlink_to(source)
    if not refit:  # the served model is the one fitted without the holdout: one fit
        import yaml

        data = yaml.safe_load(spec)
        data["model"] = {**(data.get("model") or {}), "refit_on_all": False}
        spec = yaml.safe_dump(data, sort_keys=False)
    (project / "driftloop.yaml").write_text(spec)
    driftloop = str(BIN / "driftloop")
    ingest = json.loads(_check([driftloop, "stage", "ingest", "-p", str(project), "--json"]))
    for batch_id in ingest.get("batches") or _batches(project):
        for stage in ("prep", "features"):
            _check([driftloop, "stage", stage, "-p", str(project), "-b", batch_id])
    # The MLflow store made now, as an earlier training would have: the runs measure a
    # training into an existing store (the first one also creates it; timed here).
    out, _, _ = measured([sys.executable, __file__, "--child", "store", str(project)])
    print(f"{table}: creating the MLflow store (first training only) took {out.strip()} s")
    return project


def child_store(project: Path) -> None:
    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.models.registry import open_registry

    registry = open_registry(load_spec(project), Layout(project))
    start = time.perf_counter()
    registry.client(write=True)  # type: ignore[attr-defined]  # the MLflow registry's
    print(f"{time.perf_counter() - start:.2f}")


def _batches(project: Path) -> list[str]:
    from driftloop.core.layout import Layout
    from driftloop.core.state import StateDB

    with StateDB(Layout(project).state_db) as db:
        return [b.batch_id for b in db.batches()]


def _check(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:4])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in MiB) of a fresh process, from the kernel."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.stderr is not None
        errors = proc.stderr.read()
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{output}\n{errors}")
    return output, wall, usage.ru_maxrss / 1024  # KiB on Linux


# -- the children ---------------------------------------------------------------------------
def child_bare(project: Path) -> None:
    """The bare fit: the stage's prepared table, the same pipeline, one fit on every row."""
    import polars as pl

    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.core.state import StateDB
    from driftloop.models.inputs import to_pandas_inputs
    from driftloop.train.fit import build_pipeline, groups_rare, model_inputs
    from driftloop.train.stage import feature_batches, training_frame

    spec = load_spec(project)
    layout = Layout(project)
    with StateDB(layout.state_db) as db:
        frame = training_frame(layout, feature_batches(layout, db))
    frame = frame.filter(pl.col(spec.target).is_not_null())
    inputs, categorical = model_inputs(frame, spec)
    x = to_pandas_inputs(frame, inputs, categorical)
    y = frame.get_column(spec.target).cast(pl.String).to_numpy().astype(object)
    pipeline = build_pipeline(spec, inputs, categorical, group_rare=groups_rare(frame, categorical))
    start = time.perf_counter()
    pipeline.fit(x, y)
    fit_s = time.perf_counter() - start
    print(json.dumps({"fit_s": fit_s, "rows": frame.height, "inputs": len(inputs)}))


def child_warm(projects: str) -> None:
    """The stage in one process, as the loop runs it: a first training (the imports), then
    the timed one; prints the second manifest's timings."""
    import contextlib
    import io

    from driftloop.cli import app

    timings = {}
    for project in projects.split(","):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            app(["stage", "train", "-p", project, "--json"], standalone_mode=False)
        timings = json.loads(out.getvalue())["manifest"]["timings"]
    print(json.dumps(timings))


def child_interpreter(kind: str) -> None:
    """Only the imports: the bare fit's (polars, pandas, scikit-learn) or the stage's."""
    import polars  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    from driftloop.models.inputs import to_pandas_inputs  # noqa: F401  (pandas, pyarrow)

    if kind == "stage":
        import mlflow.pyfunc  # noqa: F401
        import skops.io  # noqa: F401
        import treelite  # noqa: F401

        import driftloop.cli
        import driftloop.train.stage  # noqa: F401
    print("{}")


# -- the parent -----------------------------------------------------------------------------
def one_turn(project: Path, work: Path, turn: int) -> dict[str, Any]:
    out, bare_wall, bare_rss = measured([sys.executable, __file__, "--child", "bare", str(project)])
    bare = json.loads(out.strip().splitlines()[-1])
    copies = [work / f"{project.name}-run{turn}-{i}" for i in range(3)]
    for copy in copies:
        shutil.copytree(project, copy, symlinks=True)
    cmd = [str(BIN / "driftloop"), "stage", "train", "-p", str(copies[0]), "--json"]
    out, wall, stage_rss = measured(cmd)
    manifest = json.loads(out)["manifest"]
    out, _, _ = measured(
        [sys.executable, __file__, "--child", "warm", ",".join(str(c) for c in copies[1:])]
    )
    warm = json.loads(out.strip().splitlines()[-1])
    for copy in copies:
        shutil.rmtree(copy, ignore_errors=True)
    return {
        "bare_fit_s": bare["fit_s"],
        "bare_wall_s": bare_wall,
        "warm_s": warm["total_s"],
        "warm_parts": {k: v for k, v in warm.items() if k != "total_s"},
        "bare_rss": bare_rss,
        "rows": bare["rows"],
        "inputs": bare["inputs"],
        "stage_s": manifest["timings"]["total_s"],
        "stage_wall_s": wall,
        "stage_rss": stage_rss,
        "parts": {k: v for k, v in manifest["timings"].items() if k != "total_s"},
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="serve,latency,bank")
    parser.add_argument("--rows", type=int, default=26_000, help="rows of the serve table")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--no-refit",
        action="store_true",
        help="model.refit_on_all: false (the stage then fits once, like the bare fit)",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, where = args.child
        if kind == "bare":
            child_bare(Path(where))
        elif kind == "store":
            child_store(Path(where))
        elif kind == "warm":
            child_warm(where)
        else:
            child_interpreter(where)
        return
    interp = {
        kind: measured([sys.executable, __file__, "--child", "interpreter", kind])[2]
        for kind in ("bare", "stage")
    }
    print(
        f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; interpreter alone: "
        f"{interp['bare']:.0f} MiB with the bare fit's imports, "
        f"{interp['stage']:.0f} MiB with the stage's"
    )
    work = Path(tempfile.mkdtemp(prefix="driftloop-trainbench-"))
    try:
        for table in args.tables.split(","):
            project = make_project(table, work, args.rows, refit=not args.no_refit)
            if project is None:
                continue
            turns = [one_turn(project, work, i) for i in range(args.runs)]
            report(table, turns, interp)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(table: str, turns: list[dict[str, Any]], interp: dict[str, float]) -> None:
    def med(key: str) -> float:
        return statistics.median(t[key] for t in turns)

    first = turns[0]
    bare, stage, warm = med("bare_fit_s"), med("stage_s"), med("warm_s")
    loads = ", ".join(f"{t['load']:.1f}" for t in turns)
    print(
        f"\n{table}: {first['rows']:,} rows x {first['inputs']} inputs; median of "
        f"{len(turns)} turns (load {loads})"
    )
    print(f"  bare fit      {bare:7.2f} s  (its process {med('bare_wall_s'):.2f} s with imports)")
    print(f"  warm stage    {warm:7.2f} s  ({warm / bare:.1f}x the bare fit; as watch/up run it)")
    for part in first["warm_parts"]:
        values = [t["warm_parts"].get(part, 0.0) for t in turns]
        print(f"    {part:<22}{statistics.median(values):7.2f} s")
    print(
        f"  cold command  {med('stage_wall_s'):7.2f} s  (a process per training; the stage "
        f"{stage:.2f} s of it, its imports included)"
    )
    for part in ("fit", "register", "package"):
        values = [t["parts"].get(part, 0.0) for t in turns]
        print(f"    {part:<22}{statistics.median(values):7.2f} s")
    limit = 1.5 * bare + 1
    verdict = "met" if warm <= limit else "NOT met"
    print(f"  target warm stage <= 1.5 x bare + 1 s = {limit:.2f} s: {verdict}")
    bare_wall, cold = med("bare_wall_s"), med("stage_wall_s")
    limit = 1.5 * bare_wall + 1
    verdict = "met" if cold <= limit else "NOT met"
    print(f"  target cold command <= 1.5 x bare process + 1 s = {limit:.2f} s: {verdict}")
    footprint = med("bare_rss") - interp["bare"]
    print(
        f"  peak RSS: bare fit {med('bare_rss'):.0f} MiB (model's footprint {footprint:.0f} MiB "
        f"over its interpreter), train stage {med('stage_rss'):.0f} MiB "
        f"(interpreter {interp['stage']:.0f} MiB)"
    )
    rss_limit = interp["stage"] + 1.5 * footprint
    print(
        f"  target stage peak <= interpreter + 1.5 x footprint = {rss_limit:.0f} MiB: "
        f"{'met' if med('stage_rss') <= rss_limit else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
