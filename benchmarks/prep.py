"""Prep + features: plain pandas against driftloop, side by side, in one run.

    .venv/bin/python benchmarks/prep.py [--rows 5000000] [--repeat 2]

Generates (once, cached in benchmarks/.data/) a CSV with 20 columns: an id, a timestamp,
10 floats with ~5% missing, 3 ints, 5 string categories, ~1% exact duplicate rows and a few
invalid values. Then, each in its own fresh process, runs the same prep:

- read every value as text, cast to the contract types, quarantine rows that break a rule
  (type, range, allowed values, not-null) with the reason, drop exact duplicate rows, fill
  missing `amount` with 0, derive 5 features (hour, weekday, amount/price, log1p(amount),
  amount bucket), write the kept rows and the quarantined rows as Parquet;
- pandas: the usual hand-written stack (read_csv C engine with its own type inference, so
  clean columns are parsed as numbers directly; to_numeric/to_datetime with
  errors="coerce" where a column holds junk; boolean masks, drop_duplicates, to_parquet);
- driftloop: `driftloop run` on a project whose spec says the same (ingest with content
  hashing, prep, features: the whole pass, not just the kernel).

Prints wall time, CPU time and peak resident memory of each process (from the kernel's
rusage), the machine's load average as each run began, the ratios, and checks both produced
the same numbers of kept, quarantined and duplicate rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
FLOATS = ["amount", "price", "discount", "weight", "f5", "f6", "f7", "f8", "f9", "f10"]
INTS = ["qty", "age", "score"]
CATS = {
    "country": [f"C{i:02d}" for i in range(30)],
    "channel": ["web", "app", "store", "phone"],
    "segment": ["A", "B", "C"],
    "product": [f"P{i:03d}" for i in range(300)],
    "status": ["new", "paid", "shipped", "returned", "cancelled"],
}
TS_FMT = "%Y-%m-%d %H:%M:%S"
EDGES = [10.0, 50.0, 100.0, 500.0]

SPEC = """
name: bench
task: regression
target: score
time_column: ts
id_column: id
sources:
  - name: events
    path: data/raw/events/*.csv
contract:
  columns:
    id: {dtype: int, nullable: false}
    ts: {dtype: datetime, nullable: false, format: "%Y-%m-%d %H:%M:%S"}
    amount: {dtype: float, min: 0}
    price: {dtype: float, min: 0.0001}
    discount: {dtype: float, min: 0, max: 1}
    weight: {dtype: float}
    f5: {dtype: float}
    f6: {dtype: float}
    f7: {dtype: float}
    f8: {dtype: float}
    f9: {dtype: float}
    f10: {dtype: float}
    qty: {dtype: int, min: 1, max: 1000}
    age: {dtype: int, min: 18, max: 120}
    score: {dtype: int, min: 0, max: 1000}
    country: {dtype: str, nullable: false}
    channel: {dtype: str, allowed: [web, app, store, phone]}
    segment: {dtype: str}
    product: {dtype: str}
    status: {dtype: str, allowed: [new, paid, shipped, returned, cancelled]}
cleaning:
  trim_strings: false
  deduplicate: {enabled: true}
  impute: {amount: {strategy: constant, value: 0}}
features:
  datetime_parts: {ts: [hour, weekday]}
  ratios: [{name: amount_per_price, numerator: amount, denominator: price}]
  logs: [amount]
  buckets: [{column: amount, edges: [10, 50, 100, 500]}]
ingest: {settle_seconds: 0, follow_links_outside: true}  # the CSV is linked in place
model: {enabled: false}  # the benchmark is prep + features
"""


def generate(rows: int, path: Path) -> None:
    """A seeded, vectorised generator (numpy + polars) for the benchmark CSV."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(42)
    cols: dict[str, object] = {"id": np.arange(1, rows + 1, dtype=np.int64)}
    base = np.datetime64("2023-01-01T00:00:00", "s").astype(np.int64)
    seconds = base + rng.integers(0, 2 * 365 * 86400, rows)
    cols["ts"] = seconds.astype("datetime64[s]").astype("datetime64[ms]")
    cols["amount"] = np.round(rng.lognormal(3, 1, rows), 2)
    cols["price"] = np.round(rng.uniform(0.5, 500, rows), 2)
    cols["discount"] = np.round(rng.uniform(0, 0.5, rows), 3)
    cols["weight"] = np.round(rng.gamma(2, 2, rows), 3)
    for c in FLOATS[4:]:
        cols[c] = np.round(rng.normal(0, 10, rows), 3)
    cols["qty"] = rng.integers(1, 100, rows)
    cols["age"] = rng.integers(18, 90, rows)
    cols["score"] = rng.integers(0, 1000, rows)
    for c, levels in CATS.items():
        cols[c] = np.asarray(levels, dtype=object)[
            rng.choice(len(levels), rows, p=rng.dirichlet(np.ones(len(levels))))
        ]
    frame = pl.DataFrame(cols).with_columns(pl.col("ts").dt.strftime(TS_FMT))

    def chance(p: float) -> pl.Series:
        return pl.Series(rng.random(rows) < p)

    frame = frame.with_columns(
        [pl.when(chance(0.05)).then(None).otherwise(pl.col(c)).alias(c) for c in FLOATS]
        + [
            pl.when(chance(0.02)).then(None).otherwise(pl.col(c)).alias(c)
            for c in ("channel", "segment", "product", "status")
        ]
    ).with_columns(pl.all().cast(pl.String))

    def inject(col: str, p: float, values: list[str | None]) -> pl.Expr:
        picked = np.asarray(values, dtype=object)[rng.integers(0, len(values), rows)]
        return (
            pl.when(chance(p))
            .then(pl.Series(picked, dtype=pl.String))
            .otherwise(pl.col(col))
            .alias(col)
        )

    for expr in (
        inject("amount", 0.001, ["-5.0", "-12.34"]),
        inject("amount", 0.0002, ["abc", "12,5"]),
        inject("price", 0.0002, ["1.2.3", "free"]),
        inject("discount", 0.0005, ["1.5", "-0.2"]),
        inject("qty", 0.0005, ["0", "-3", "100000"]),
        inject("qty", 0.0001, ["ten", "3.5"]),
        inject("age", 0.0005, ["7", "150"]),
        inject("ts", 0.0002, ["2023-13-45 99:00:00", "not a date"]),
        inject("status", 0.0005, ["unknown", "PAID"]),
        inject("channel", 0.0003, ["fax"]),
        inject("country", 0.0002, [None]),
    ):
        frame = frame.with_columns(expr)
    # ~1% exact duplicates: copies of random earlier rows
    is_dup = rng.random(rows) < 0.01
    is_dup[0] = False
    originals = np.flatnonzero(~is_dup)
    dup_at = np.flatnonzero(is_dup)
    before = np.searchsorted(originals, dup_at)
    order = np.arange(rows)
    order[dup_at] = originals[(rng.random(len(dup_at)) * before).astype(np.int64)]
    tmp = path.with_suffix(".tmp")
    frame[order].write_csv(tmp)
    tmp.rename(path)


def run_pandas(csv_path: Path, out: Path, *, text_first: bool = False) -> dict[str, int]:
    """The hand-written pandas prep: same rules, same outputs.

    By default pandas' best shot: the C parser types every clean column itself, and only a
    column holding a value that does not parse comes back as text and is coerced (and
    checked). ``text_first`` reads every value as text first, as driftloop does, so that the
    quarantine shows each bad row exactly as it was written.
    """
    import numpy as np
    import pandas as pd

    if text_first:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    else:
        raw = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    typed = pd.DataFrame(index=raw.index)
    typed["ts"] = pd.to_datetime(raw["ts"], format=TS_FMT, errors="coerce")
    for c in ["id", *FLOATS, *INTS]:
        col = raw[c]
        typed[c] = (
            col if pd.api.types.is_numeric_dtype(col) else pd.to_numeric(col, errors="coerce")
        )
    for c in ["id", *INTS]:
        number = typed[c]
        typed[c] = number.where(number == np.floor(number)).astype("Int64")
    for c in CATS:
        typed[c] = raw[c]
    checks = {}
    for c in ["id", "ts", *FLOATS, *INTS]:
        checks[f"dtype:{c}"] = raw[c].notna() & typed[c].isna()  # all False for typed columns
    for c, lo, hi in [
        ("amount", 0, None),
        ("price", 0.0001, None),
        ("discount", 0, 1),
        ("qty", 1, 1000),
        ("age", 18, 120),
        ("score", 0, 1000),
    ]:
        broken = (typed[c] < lo).fillna(False).astype(bool)
        if hi is not None:
            broken |= (typed[c] > hi).fillna(False).astype(bool)
        checks[f"range:{c}"] = broken
    for c in ("id", "ts", "country"):
        checks[f"not_null:{c}"] = typed[c].isna() & raw[c].isna()
    for c, allowed in (("channel", CATS["channel"]), ("status", CATS["status"])):
        checks[f"allowed:{c}"] = typed[c].notna() & ~typed[c].isin(allowed)
    flags = pd.DataFrame(checks)
    bad_mask = flags.any(axis=1).to_numpy()
    bad = raw[bad_mask].astype("string")  # mixed-type columns: write the text
    bad_flags = flags[bad_mask]
    bad["reason"] = bad_flags.apply(lambda row: "; ".join(row.index[row.to_numpy()]), axis=1)
    bad.to_parquet(out / "bad.parquet")
    good = typed[~bad_mask]
    kept = good.drop_duplicates(keep="first")
    duplicates = len(good) - len(kept)
    kept = kept.assign(amount=kept["amount"].fillna(0.0))
    kept["ts_hour"] = kept["ts"].dt.hour
    kept["ts_weekday"] = kept["ts"].dt.day_of_week + 1
    kept["amount_per_price"] = (kept["amount"] / kept["price"]).where(kept["price"] != 0)
    kept["log1p_amount"] = np.log1p(kept["amount"])
    kept["amount_bucket"] = pd.cut(kept["amount"], [-np.inf, *EDGES, np.inf]).astype(str)
    kept.to_parquet(out / "good.parquet", index=False)
    return {"ok": len(kept), "quarantined": int(bad_mask.sum()), "duplicate": duplicates}


def run_driftloop(csv_path: Path, out: Path) -> dict[str, int]:
    """`driftloop run` on a fresh project holding the CSV (a symlink: read in place)."""
    from driftloop.pipeline import run

    (out / "driftloop.yaml").write_text(SPEC, encoding="utf-8")
    raw = out / "data" / "raw" / "events"
    raw.mkdir(parents=True)
    (raw / csv_path.name).symlink_to(csv_path.resolve())
    result = run(out)
    if result.failed:
        raise SystemExit(f"driftloop failed: {[r.error for r in result.failed]}")
    [prep] = [r for r in result.reports if r.stage == "prep"]
    m = prep.manifest
    return {
        "ok": m["rows_ok"],
        "quarantined": m["rows_quarantined"],
        "duplicate": m["rows_duplicate"],
        "streamed": m["streamed"],
    }


ENGINES = {
    "pandas": run_pandas,
    "pandas-text": lambda csv_path, out: run_pandas(csv_path, out, text_first=True),
    "driftloop": run_driftloop,
}


def measure(engine: str, csv_path: Path) -> dict[str, object]:
    """Run one engine in a fresh child process; wall time and the child's peak RSS."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as tmp:
        cmd = [sys.executable, __file__, "--child", engine, "--csv", str(csv_path), "--out", tmp]
        start = time.perf_counter()
        load = os.getloadavg()[0]  # the machine is shared: how busy it was as the run began
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        assert proc.stdout is not None
        output = proc.stdout.read()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{engine} failed with exit code {proc.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    return {
        "engine": engine,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,
        "load": load,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine; the best is shown")
    parser.add_argument(
        "--text-first", action="store_true", help="also run pandas reading every value as text"
    )
    parser.add_argument("--child", choices=[*ENGINES, "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.rows, args.csv)
        return
    if args.child:
        print(json.dumps(ENGINES[args.child](args.csv, args.out)))
        return
    engines = ["pandas", "driftloop"] + (["pandas-text"] if args.text_first else [])

    DATA.mkdir(exist_ok=True)
    csv_path = DATA / f"prep-{args.rows}.csv"
    if not csv_path.exists():
        # In a child process: a child inherits its parent's peak RSS across fork and exec,
        # so this process stays small for the measurements to be the engines' own.
        print(f"generating {csv_path} ...", flush=True)
        gen = [sys.executable, __file__, "--child", "generate", "--csv", str(csv_path)]
        gen += ["--rows", str(args.rows)]
        subprocess.run(gen, check=True)
    size_mb = csv_path.stat().st_size / 2**20
    print(f"input: {csv_path.name}, {args.rows:,} rows x 20 columns, {size_mb:.0f} MiB")
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    best: dict[str, dict[str, object]] = {}
    for run in range(1, args.repeat + 1):
        for engine in engines:
            r = measure(engine, csv_path)
            print(
                f"run {run} {engine:<12} {r['wall_s']:6.2f} s wall, {r['cpu_s']:6.2f} s cpu, "
                f"{r['peak_mb']:5.0f} MiB, load {r['load']:.1f}",
                flush=True,
            )
            if engine not in best or float(r["wall_s"]) < float(best[engine]["wall_s"]):  # type: ignore[arg-type]
                best[engine] = r
    header = ("engine", "wall s", "cpu s", "peak MiB", "kept", "quarantined", "duplicate")
    print("\n{:<12} {:>8} {:>8} {:>9} {:>10} {:>12} {:>10}".format(*header))
    for engine, r in best.items():
        print(
            f"{engine:<12} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['peak_mb']:>9.0f} "
            f"{r['ok']:>10,} {r['quarantined']:>12,} {r['duplicate']:>10,}"
        )
    d = best["driftloop"]
    same = True
    for anchor in (e for e in engines if e != "driftloop"):
        p = best[anchor]
        speed = float(p["wall_s"]) / float(d["wall_s"])  # type: ignore[arg-type]
        memory = float(d["peak_mb"]) / float(p["peak_mb"])  # type: ignore[arg-type]
        cpu = float(p["cpu_s"]) / float(d["cpu_s"])  # type: ignore[arg-type]
        print(f"\ndriftloop vs {anchor}: {speed:.1f}x faster, {memory:.2f}x the peak memory")
        # pandas runs on one core, driftloop on two: when other work holds a core, the
        # wall-time ratio falls toward this one
        print(f"cpu time: {anchor} uses {cpu:.1f}x driftloop's")
        print(
            f"targets: >= 5x faster ({'met' if speed >= 5 else 'NOT met'}), "
            f"<= 0.33x memory ({'met' if memory <= 1 / 3 else 'NOT met'})"
        )
        same = same and all(p[k] == d[k] for k in ("ok", "quarantined", "duplicate"))
    print(f"same kept/quarantined/duplicate counts: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
