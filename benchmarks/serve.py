"""Serving: `mlflow models serve` against `driftloop serve`, side by side, in one run.

    .venv/bin/python benchmarks/serve.py [--seconds 10] [--rows 20000]

Trains one model (driftloop's default, histogram gradient boosting) on a generated
classification table with 20 input columns (14 numbers, 5 categories, a timestamp), then
serves that same registered version with:

- `mlflow models serve -m models:/<name>@champion --env-manager local` (MLflow's scoring
  server: uvicorn; run with 1 worker, its default, and with 2 workers);
- `driftloop serve` (its defaults: 2 workers, one thread each, micro-batching, the
  verified Treelite path).

Every server runs on 127.0.0.1 with the same CPU budget (the same cores, with
OMP_NUM_THREADS=1 per worker so no server oversubscribes them) and is loaded by wrk (from
the Debian package; without it, by benchmarks/httpload.py) with single-record requests at
concurrency 8 and 32, cycling through 200 different records, and again at 32 with a
busy-loop process per core running beside (a CPU-heavy job on the same machine). A bare
FastAPI endpoint returning a constant (benchmarks/ceiling.py, same uvicorn, protocol and
two workers) is loaded alike: the HTTP ceiling driftloop is compared with. The serving
workers' peak RSS is reported next to the model's own footprint (the RSS a process gains
by loading it as a worker does, above the worker's libraries). Prints requests/s, p50 and
p99 latency, errors and the ratios; the time from start to the first answered request; the
in-process floor (the model alone on one record) and the HTTP overhead above it (p50 at
concurrency 1 minus the floor); and checks that both servers' predictions equal the batch
path's to 1e-6.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

from driftloop.serving.client import free_port

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RECORDS = 200

SPEC = """
name: servebench
task: classification
target: converted
time_column: ts
sources:
  - name: events
    path: data/raw/events/*.csv
contract:
  columns:
    ts: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
{numbers}
    country: {dtype: str}
    channel: {dtype: str, allowed: [web, app, store, phone]}
    segment: {dtype: str, allowed: [A, B, C]}
    product: {dtype: str}
    status: {dtype: str, allowed: [new, paid, shipped, returned]}
    converted: {dtype: str, allowed: ["no", "yes"], nullable: false}
ingest: {settle_seconds: 0}
serving: {workers: 2, threads_per_worker: 1}
"""
NUMBERS = [f"n{i:02d}" for i in range(14)]


def generate(project: Path, rows: int, seed: int = 0) -> pl.DataFrame:
    """A classification table whose label depends on numbers, categories and the hour."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {
        "ts": [
            f"2025-0{1 + i * 6 // rows}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"
            for i in range(rows)
        ]
    }
    for name in NUMBERS:
        values = rng.normal(size=rows).round(4)
        values[rng.random(rows) < 0.03] = np.nan
        data[name] = values
    data["country"] = rng.choice([f"C{i:02d}" for i in range(30)], rows)
    data["channel"] = rng.choice(["web", "app", "store", "phone"], rows)
    data["segment"] = rng.choice(["A", "B", "C"], rows)
    data["product"] = rng.choice([f"P{i:03d}" for i in range(120)], rows)
    data["status"] = rng.choice(["new", "paid", "shipped", "returned"], rows)
    logit = (
        np.nan_to_num(data["n00"])
        - 0.7 * np.nan_to_num(data["n01"])
        + 0.4 * np.nan_to_num(data["n02"]) ** 2
        + (data["channel"] == "app") * 0.8
        - (data["segment"] == "C") * 0.5
    )
    data["converted"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame = pl.DataFrame(data)
    folder = project / "data" / "raw" / "events"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_csv(folder / "events.csv")
    return frame


def train(project: Path, rows: int) -> pl.DataFrame:
    spec = SPEC.replace("{numbers}", "\n".join(f"    {n}: {{dtype: float}}" for n in NUMBERS))
    project.mkdir(parents=True)
    (project / "driftloop.yaml").write_text(spec)
    frame = generate(project, rows)
    done = subprocess.run(
        [str(BIN / "driftloop"), "run", "-p", str(project)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stdout}\n{done.stderr}")
    print(done.stdout.strip().splitlines()[-2])
    return frame


def records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    rows = frame.drop("converted").head(RECORDS)
    out = []
    for row in rows.iter_rows(named=True):
        out.append(
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        )
    return out


def settled(url: str, timeout: float = 60.0) -> None:
    """Wait until driftloop's workers have read the registry once (steady state: the first
    check imports MLflow in the background, which would otherwise land in the measurement)."""
    in_a_row = 0
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while in_a_row < 20 and time.monotonic() < deadline:
            checked = client.get(f"{url}/ready").json().get("registry_checked_at")
            in_a_row = in_a_row + 1 if checked else 0
            time.sleep(0.05)


@dataclass
class Server:
    name: str
    url: str
    predict: str  # path
    wrap: bool  # MLflow wants {"dataframe_records": [...]}
    ready_seconds: float
    pid: int = 0  # the server's process (uvicorn's workers are its children)


@contextmanager
def started(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    url: str,
    predict: str,
    wrap: bool,
    probe: dict[str, Any],
) -> Iterator[Server]:
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    began = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    body = {"dataframe_records": [probe]} if wrap else probe
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.post(f"{url}{predict}", json=body, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - began > 300:  # generous: a loaded machine starts slowly
                raise SystemExit(f"{name} did not answer in 300 s")
            time.sleep(0.02)
        yield Server(name, url, predict, wrap, time.perf_counter() - began, process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.unlink(missing_ok=True)


LUA = """
local bodies = {BODIES}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  local fmt = 'RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, '
    .. '"errors": %d, "non2xx": %d}\\n'
  io.write(string.format(fmt, summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def lua_script(bodies: list[dict[str, Any]], wrap: bool, folder: Path) -> Path:
    def lua_string(text: str) -> str:
        return "[==[" + text + "]==]"

    payloads = [json.dumps({"dataframe_records": [b]} if wrap else b) for b in bodies]
    path = folder / ("mlflow.lua" if wrap else "driftloop.lua")
    path.write_text(LUA.replace("{BODIES}", "{" + ",".join(lua_string(p) for p in payloads) + "}"))
    path.with_suffix(".json").write_text(  # the same bodies for httpload.py
        json.dumps([{"dataframe_records": [b]} if wrap else b for b in bodies])
    )
    return path


def load(server: Server, script: Path, connections: int, seconds: float) -> dict[str, float]:
    """wrk when installed, else benchmarks/httpload.py (the script's folder holds both
    inputs: the Lua script and the bodies as JSON)."""
    if shutil.which("wrk") is None:
        bodies = script.with_suffix(".json")
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "httpload.py"),
                f"{server.url}{server.predict}",
                str(bodies),
                str(connections),
                str(seconds),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        result: dict[str, float] = json.loads(line.removeprefix("RESULT "))
        result["rps"] = result["requests"] / result["seconds"]
        return result
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(script),
            f"{server.url}{server.predict}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def predictions(server: Server, bodies: list[dict[str, Any]]) -> np.ndarray:
    """P(yes) for each record, one request each."""
    out = []
    with httpx.Client(timeout=30) as client:
        for body in bodies:
            payload = {"dataframe_records": [body]} if server.wrap else body
            answer = client.post(f"{server.url}{server.predict}", json=payload).json()
            if server.wrap:
                out.append(answer["predictions"][0]["proba_yes"])
            else:
                out.append(answer["predictions"][0]["probabilities"]["yes"])
    return np.array(out)


def floor(project: Path, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """The model alone on one record, in this process: the registered pyfunc path and
    driftloop's serving path (contract check, features, compiled trees)."""
    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.models.mlflow_registry import load_predictor
    from driftloop.models.registry import CHAMPION, open_registry
    from driftloop.serving.model import ServedModel

    spec, layout = load_spec(project), Layout(project)
    registry = open_registry(spec, layout)
    version = registry.alias(CHAMPION)
    predictor = load_predictor(registry, f"models:/{spec.name}/{version}")
    from driftloop.models import cache as model_cache

    entry = model_cache.fetch(registry, layout, str(version))  # keyed by version and run id
    served = ServedModel.load(
        spec.name, str(version), entry / "driftloop", unknown_category="reject"
    )
    texts = [served.contract.records(b)[0] for b in bodies]

    def per_call(fn: Any, n: int = 300) -> float:
        for i in range(20):
            fn(i)
        began = time.perf_counter()
        for i in range(n):
            fn(i)
        return (time.perf_counter() - began) / n * 1000

    return {
        "pyfunc_ms": per_call(lambda i: predictor.predict([bodies[i % len(bodies)]])),
        "driftloop_ms": per_call(lambda i: served.score([texts[i % len(texts)]])),
        "engine": served.info["inference"]["engine"],
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(results: dict[str, dict[str, Any]], base: dict[str, Any], n_records: int) -> None:
    print()
    head = ("server", "ready s", "c", "req/s", "p50 ms", "p99 ms", "errors")
    print("{:<11} {:>8} {:>3} {:>9} {:>8} {:>8} {:>7}".format(*head))
    for name, row in results.items():
        for c in (8, 32):
            r = row[c]
            errors = int(r["errors"] + r["non2xx"])
            print(
                f"{name:<11} {row['ready_s']:>8.2f} {c:>3} {r['rps']:>9.1f} "
                f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {errors:>7}"
            )
    ours = results["driftloop"]
    print()
    for anchor in ("mlflow-1w", "mlflow-2w"):
        theirs = results[anchor]
        for c in (8, 32):
            print(
                f"vs {anchor}, concurrency {c}: "
                f"{ours[c]['rps'] / theirs[c]['rps']:.1f}x the requests/s, "
                f"{ours[c]['p99_ms'] / theirs[c]['p99_ms']:.3f}x the p99"
            )
        rps_ok = ours[32]["rps"] >= 20 * theirs[32]["rps"]
        p99_ok = ours[32]["p99_ms"] <= theirs[32]["p99_ms"] / 5
        print(
            f"targets vs {anchor} at concurrency 32: >= 20x requests/s ({verdict(rps_ok)}), "
            f"<= 1/5 p99 ({verdict(p99_ok)})"
        )
    print(
        f"in-process floor, one record: MLflow pyfunc (scikit-learn) {base['pyfunc_ms']:.2f} ms; "
        f"driftloop's scoring path ({base['engine']}) {base['driftloop_ms']:.2f} ms"
    )
    single = ours[1]
    print(
        f"driftloop at concurrency 1: {single['rps']:.0f} req/s, p50 {single['p50_ms']:.2f} ms: "
        f"HTTP and queueing add {single['p50_ms'] - base['driftloop_ms']:.2f} ms to the floor"
    )
    worst = max(r["max_diff"] for r in results.values() if "max_diff" in r)
    print(
        f"same predictions from every server (P(yes) of {n_records} records, to 1e-6): "
        f"{'yes' if worst <= 1e-6 else 'NO'} (max difference {worst:.2g})"
    )
    ready = ", ".join(f"{name} {row['ready_s']:.2f} s" for name, row in results.items())
    print(f"start to first answered prediction: {ready}")


def demo_ready(work: Path, starts: int = 3) -> list[float]:
    """Seconds from `driftloop serve` starting to /ready, on the demo's model (the `shop`
    example's first week, trained as `make demo` trains it)."""
    from driftloop.init import init_example
    from driftloop.pipeline import run
    from driftloop.serving.client import background_server

    project = work / "demo"
    init_example(project, "shop", force=True)
    if run(project).failed:
        raise SystemExit("the demo project did not train")
    seconds = []
    for i in range(starts):
        log = work / f"demo-serve-{i}.log"
        with background_server(project, log=log) as server:
            seconds.append(server.ready_seconds)
    return seconds


BUSY = "while True: pass"


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """A CPU-heavy job beside the benchmark: one busy-loop process per core."""
    procs = [
        subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True) for _ in range(count)
    ]
    try:
        yield
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _status(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_peaks(root: int) -> list[int]:
    """Peak RSS (VmHWM, KiB) of each child of ``root`` (uvicorn's worker processes)."""
    peaks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            peaks.append(_status(int(stat.parent.name), "VmHWM"))
    return [p for p in peaks if p]


FOOTPRINT = """
import os, sys
from pathlib import Path
def rss():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
bare = rss()
# What a serving worker has before its first model: the app `driftloop serve`'s workers
# build (uvicorn, the serving app, the dashboard), and the registry client its champion
# thread reads the alias with (then the cached package).
import uvicorn
os.environ["DRIFTLOOP_SERVE_PROJECT"] = sys.argv[1]
from driftloop.ui.app import serving_app_from_environment
app = serving_app_from_environment()
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.models import cache as model_cache
from driftloop.models.registry import CHAMPION
from driftloop.serving.champion import ChampionSource
from driftloop.serving.model import ServedModel
project = Path(sys.argv[1])
spec, layout = load_spec(project), Layout(project)
source = ChampionSource(spec, layout)
version = str(source.registry.alias(CHAMPION))
entry = model_cache.fetch(source.registry, layout, version)
libraries = rss()
served = ServedModel.load(spec.name, version, entry / "driftloop", unknown_category="reject",
                          compiled=entry / model_cache.COMPILED)
print(bare, libraries, rss(), "sklearn" in sys.modules)
"""


def footprint(project: Path) -> dict[str, Any]:
    """KiB: a bare interpreter, a worker's libraries and registry client before its first
    model, and after loading the model as a worker does (the model's own footprint is the
    last minus the second)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, "-c", FOOTPRINT, str(project), str(HERE)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    bare, libraries, loaded = (int(x) for x in out[-4:-1])
    return {
        "bare": bare,
        "libraries": libraries,
        "model": loaded - libraries,
        "sklearn": out[-1] == "True",
    }


def report_more(results: dict[str, dict[str, Any]], memory: dict[str, Any]) -> None:
    ours, ceiling = results["driftloop"], results["ceiling"]
    share = ours[32]["rps"] / ceiling[32]["rps"]
    print(
        f"HTTP ceiling (bare FastAPI constant, same uvicorn and workers) at concurrency 32: "
        f"{ceiling[32]['rps']:.0f} req/s, p50 {ceiling[32]['p50_ms']:.2f} ms; driftloop "
        f"reaches {share:.0%} of it (target >= 70%: {verdict(share >= 0.7)})"
    )
    for anchor in ("mlflow-1w", "mlflow-2w"):
        theirs = results[anchor]["busy32"]
        mine = ours["busy32"]
        ratio = mine["p99_ms"] / theirs["p99_ms"]
        print(
            f"with a busy loop per core beside, concurrency 32 vs {anchor}: driftloop "
            f"{mine['rps']:.0f} req/s p99 {mine['p99_ms']:.1f} ms, {anchor} "
            f"{theirs['rps']:.0f} req/s p99 {theirs['p99_ms']:.1f} ms: {ratio:.3f}x the p99 "
            f"(target <= 1/5: {verdict(ratio <= 0.2)})"
        )
    busy = ceiling["busy32"]
    print(
        f"  (the ceiling with the busy loops: {busy['rps']:.0f} req/s, p99 {busy['p99_ms']:.1f} ms)"
    )
    mib = 1024
    peak = max(memory["peaks"])
    model, libraries, bare = memory["model"], memory["libraries"], memory["bare"]
    print(
        f"memory: serving worker peak RSS {peak / mib:.0f} MiB (workers: "
        + ", ".join(f"{p / mib:.0f}" for p in memory["peaks"])
        + f" MiB); bare interpreter {bare / mib:.0f} MiB, a worker before its first model "
        f"{libraries / mib:.0f} MiB, the model loaded as a worker loads it adds "
        f"{model / mib:.1f} MiB (scikit-learn imported by the load: {memory['sklearn']})"
    )
    allowed = libraries + 1.5 * model
    print(
        f"  peak <= libraries + 1.5 x model ({allowed / mib:.0f} MiB): "
        f"{verdict(peak <= allowed)}; peak above the libraries: {(peak - libraries) / mib:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load run")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument(
        "--ready-only", action="store_true", help="only the demo model's time to ready"
    )
    args = parser.parse_args()
    if args.ready_only:
        ready = demo_ready(Path(tempfile.mkdtemp(prefix="driftloop-ready-")))
        print(
            f"demo model, start to /ready (2 workers), {len(ready)} starts: "
            + ", ".join(f"{r:.2f} s" for r in ready)
        )
        return
    if shutil.which("wrk") is None:
        print("wrk is not installed: the load comes from benchmarks/httpload.py (Python)")
    os.environ["OMP_NUM_THREADS"] = "1"
    work = Path(tempfile.mkdtemp(prefix="driftloop-serve-bench-"))
    project = work / "project"
    print(
        f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, rows {args.rows}, "
        f"{args.seconds:g} s per run"
    )
    frame = train(project, args.rows)
    bodies = records(frame)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # mlflow starts 'uvicorn' from PATH
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    scripts = {w: lua_script(bodies, w, work) for w in (False, True)}
    results: dict[str, dict[str, Any]] = {}
    reference = None
    configs = [
        ("mlflow-1w", True, ["--workers", "1"]),
        ("mlflow-2w", True, ["--workers", "2"]),
        ("driftloop", False, []),
        ("ceiling", False, []),
    ]
    memory: dict[str, Any] = {}
    for name, wrap, extra in configs:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if wrap:
            cmd = [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                "models:/servebench@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                *extra,
            ]
            path = "/invocations"
        elif name == "ceiling":
            cmd = [
                str(BIN / "uvicorn"),
                "ceiling:app",
                "--app-dir",
                str(HERE),
                "--workers",
                "2",
                "--http",
                "httptools",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            path = "/predict"
        else:
            cmd = [str(BIN / "driftloop"), "serve", "-p", str(project), "--port", str(port)]
            path = "/predict"
        with started(name, cmd, env, url, path, wrap, bodies[0]) as server:
            if name == "driftloop":
                settled(url)
            load(server, scripts[wrap], 8, 3)  # warm-up
            row: dict[str, Any] = {"ready_s": server.ready_seconds}
            for c in (8, 32):
                row[c] = load(server, scripts[wrap], c, args.seconds)
            with busy_cores(os.cpu_count() or 2):
                row["busy32"] = load(server, scripts[wrap], 32, args.seconds)
            results[name] = row
            print(f"  {name}: done")
            if name == "ceiling":
                continue
            if not wrap:
                row[1] = load(server, scripts[wrap], 1, max(3.0, args.seconds / 2))
                memory["peaks"] = worker_peaks(server.pid)
            got = predictions(server, bodies)
            if reference is None:
                reference = got
            row["max_diff"] = float(np.max(np.abs(got - reference)))
    memory.update(footprint(project))
    report(results, floor(project, bodies), len(bodies))
    report_more(results, memory)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
