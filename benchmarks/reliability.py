"""The reliability probe, rerun: kill -9, fuzzed files, schemathesis, swaps under load, a
soak, and a secret sweep, each checked and counted; one table row per trial.

    .venv/bin/python benchmarks/reliability.py [--quick] [--only NAME] [--soak-seconds 120]
    make reliability

Trials (NAME for --only), full size / --quick:

- ``kill9``: 20 / 4 ``kill -9``s of ``driftloop watch`` while files land (one each), then
  ``watch --until-idle``; nothing lost, nothing repeated, registry = decisions
  (tests/crash_trials.py, shared with tests/test_crash.py).
- ``fuzz``: 500 / 40 fuzzed CSV and Parquet files (benchmarks/fuzz_files.py), put through
  ``driftloop run`` 25 at a time; every run exits with a message and no traceback, every
  file is read (rows_in = ok + quarantined + duplicate) or reported unreadable.
- ``schemathesis``: 1000 / 100 requests generated from the server's /openapi.json against a
  real ``driftloop serve`` with API tokens; no 5xx. Schemathesis runs from its own
  virtualenv, benchmarks/.venv-schemathesis (created on first use; it needs the package
  index), so it cannot change the project's pins.
- ``swaps``: 6 / 3 promotions and rollbacks while tests/load_client.py keeps requesting;
  no failed request.
- ``soak``: ``--soak-seconds`` (120 / 20) of load on two workers, their RSS sampled each
  second; flat when the median of the last quarter is within 10% (+ 16 MB) of the second's.
- ``secrets``: a pass, ``status``, ``models`` and the server with a password in the MLflow
  URI (a registry that does not answer) and an API token in the environment; every file the
  project wrote and every output is searched for both.

Exit code 0 when every trial passed, 1 otherwise. Work files go to a temporary folder
(``--keep`` keeps it and prints where).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the shared helpers of tests/ (a package) and benchmarks/
    sys.path.insert(0, str(REPO))

CLI = [sys.executable, "-m", "driftloop.cli"]
SCHEMATHESIS_VENV = REPO / "benchmarks" / ".venv-schemathesis"
HANG_GUARD = 900.0  # seconds: a stuck process fails the trial, a slow one does not
SOAK_TOLERANCE = 0.10  # the last quarter's median RSS within 10% (+ SOAK_SLACK) of the second's
SOAK_SLACK = 16 * 2**20


@dataclass
class Row:
    trial: str
    count: int
    failures: int
    checked: str
    detail: str = ""

    @property
    def result(self) -> str:
        return "ok" if self.failures == 0 else "FAILED"


def env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_API_TOKENS")}
    return {**keep, "OMP_NUM_THREADS": "1", **extra}


def cli(args: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env=environment,
        check=False,
    )


# ---- 1. kill -9 ---------------------------------------------------------------------------


def kill9(work: Path, kills: int) -> Row:
    from tests.crash_trials import crash_problems, finish, kill_watch_at_random, stage_kills

    rows = 400
    in_stage = kill_watch_at_random(work, kills, rows, seed=20261202)
    done = finish(work)
    problems = [] if done.returncode == 0 else [f"watch --until-idle exited {done.returncode}"]
    problems += crash_problems(work, kills, rows)
    return Row(
        "kill -9 of watch",
        kills,
        len(problems),
        "no file or row lost, no batch twice, registry = decisions",
        "; ".join(problems)[:500]
        or f"{in_stage} kills just after a stage started, {stage_kills(work)} stage runs cut",
    )


# ---- 2. fuzzed files ----------------------------------------------------------------------

FUZZ_SPEC = """
name: fuzz
task: classification
target: y
time_column: t
sources: [{{name: s, path: data/raw/s/*.{ext}, format: {fmt}}}]
contract:
  columns:
    t: {{dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}}
    x1: {{dtype: float}}
    x2: {{dtype: float}}
    c: {{dtype: str}}
    y: {{dtype: str, nullable: false}}
ingest: {{settle_seconds: 0}}
model: {{enabled: false}}
"""
# y lists no allowed labels: a label outside such a list refuses the whole batch by design
# (a new class is a decision), which would hide the per-file accounting this trial checks.
FUZZ_GROUP = 25  # files per project and pass


def fuzz_group(project: Path, files: list[tuple[str, bytes, list[str]]], kind: str) -> list[str]:
    """One pass over ``files``; the problems (none: [])."""
    ext = "csv" if kind == "csv" else "parquet"
    project.mkdir(parents=True)
    (project / "driftloop.yaml").write_text(FUZZ_SPEC.format(ext=ext, fmt=kind), encoding="utf-8")
    raw = project / "data" / "raw" / "s"
    raw.mkdir(parents=True)
    for name, data, _ in files:
        (raw / name).write_bytes(data)
    done = cli(["run", "-p", str(project)], env())
    output = done.stdout + done.stderr
    problems = []
    failed = " / ".join(x[:200] for x in output.splitlines() if x.startswith("FAILED"))
    if "Traceback" in output or done.returncode not in (0, 1):
        problems.append(f"{project.name}: exit {done.returncode}: {output[-400:]!r}")
    elif done.returncode == 1 and not output.strip():
        problems.append(f"{project.name}: exit 1 with no message")
    return problems + unaccounted(project, files, output, failed)


def unaccounted(
    project: Path, files: list[tuple[str, bytes, list[str]]], output: str, failed: str = ""
) -> list[str]:
    """Every file read (rows_in = ok + quarantined + duplicate) or reported unreadable; the
    files that are neither, or whose rows do not add up."""
    import polars as pl

    problems = []
    data = project / "data"
    manifests = [json.loads(p.read_text()) for p in data.glob("processed/*/manifest.json")]
    quarantine = [json.loads(p.read_text()) for p in data.glob("quarantine/*/manifest.json")]
    read = {i["path"]: i["rows"] for m in manifests for i in m.get("inputs", [])}
    reported = {
        f["path"]: f.get("error", "")
        for m in [*manifests, *quarantine]
        for f in m.get("files_quarantined", [])
    }

    def per_file(pattern: str) -> dict[str, int]:
        found = list(data.glob(pattern))
        if not found:
            return {}
        frame = pl.concat([pl.read_parquet(p, columns=["__file"]) for p in found])
        counts = frame.group_by("__file").len()
        return dict(zip(counts["__file"].to_list(), counts["len"].to_list(), strict=True))

    ok = per_file("processed/*/data.parquet")
    bad = per_file("quarantine/*/rows.parquet")
    dup = per_file("quarantine/*/duplicates.parquet")
    for name, _, applied in files:
        path = f"data/raw/s/{name}"
        if path in read:
            counted = ok.get(path, 0) + bad.get(path, 0) + dup.get(path, 0)
            if counted != read[path]:
                problems.append(f"{name} {applied}: {read[path]} rows in, {counted} accounted")
        elif path in reported:
            if not reported[path].strip() or "Traceback" in reported[path]:
                problems.append(f"{name} {applied}: unreadable with no clear reason")
        elif f"skipped {path}: same content as" in output:
            pass  # the same bytes as a file already taken: reported, not read twice
        else:
            problems.append(f"{name} {applied}: neither read nor reported ({failed})")
    return problems


def fuzz(work: Path, count: int, kind: str) -> Row:
    from benchmarks.fuzz_files import fuzzed_files

    files = list(fuzzed_files(count, seed=20261202, kind=kind))
    problems: list[str] = []
    for start in range(0, len(files), FUZZ_GROUP):
        problems += fuzz_group(work / f"{start:04d}", files[start : start + FUZZ_GROUP], kind)
    return Row(
        f"fuzzed {'CSV' if kind == 'csv' else 'Parquet'} files",
        len(files),
        len(problems),
        "no traceback; each file read (rows_in = ok + quarantined + duplicate) or reported",
        by_reason(problems),
    )


def by_reason(problems: list[str]) -> str:
    """The problems grouped by the run's failure they came with (batch ids left out)."""
    if not problems:
        return ""
    counts: dict[str, int] = {}
    for problem in problems:
        reason = re.sub(r"\d{8}T\d{6}-[0-9a-f]+", "BATCH", problem.partition(": ")[2])
        counts[reason] = counts.get(reason, 0) + 1
    shown = sorted(counts.items(), key=lambda item: -item[1])[:5]
    return f"{len(problems)} problem(s): " + "; ".join(f"{n} x {r}" for r, n in shown)


def fuzz_csv(work: Path, count: int) -> Row:
    return fuzz(work, count, "csv")


def fuzz_parquet(work: Path, count: int) -> Row:
    return fuzz(work, count, "parquet")


# ---- 3. schemathesis ----------------------------------------------------------------------


def schemathesis_cli() -> Path:
    """The schemathesis command of its own virtualenv, created on first use."""
    exe = SCHEMATHESIS_VENV / "bin" / "schemathesis"
    if not exe.exists():
        python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([python, "-m", "venv", str(SCHEMATHESIS_VENV)], check=True)
        pip = [str(SCHEMATHESIS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "schemathesis"], check=True)
    return exe


def schemathesis(work: Path, requests: int) -> Row:
    from tests.serving_helpers import synthetic_project

    from driftloop.serving.client import background_server

    exe = schemathesis_cli()
    token = "reliability-token-" + os.urandom(8).hex()
    tokens = f"{token}:predict+feedback+admin+metrics"
    project = synthetic_project(work / "p", versions=2)
    sent, errors, runs = 0, 0, 0
    statuses: dict[int, int] = {}
    problems: list[str] = []
    log = work / "serve.log"
    with background_server(
        project, log=log, env=env(DRIFTLOOP_API_TOKENS=tokens), token=token
    ) as server:
        while sent < requests and runs < 20:
            har = work / f"run-{runs}.har"
            done = subprocess.run(
                [
                    str(exe),
                    "run",
                    f"{server.url}/openapi.json",
                    "--header",
                    f"Authorization: Bearer {token}",
                    "--checks",
                    "not_a_server_error",
                    "--max-examples",
                    str(max(5, requests // 25)),
                    "--seed",
                    str(20261202 + runs),
                    "--report",
                    "har",
                    "--report-har-path",
                    str(har),
                    "--no-color",
                ],
                capture_output=True,
                text=True,
                timeout=HANG_GUARD,
                check=False,
                cwd=work,
            )
            runs += 1
            if not har.is_file():
                problems.append(f"schemathesis wrote no report: {done.stdout[-600:]}")
                break
            for entry in json.loads(har.read_text())["log"]["entries"]:
                status = int(entry["response"]["status"])
                statuses[status] = statuses.get(status, 0) + 1
                sent += 1
                errors += status >= 500
            if server.process.poll() is not None:
                problems.append("the server exited")
                break
    if errors:
        problems.append(f"{errors} answers were 5xx")
    shown = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
    return Row(
        "schemathesis requests",
        sent,
        errors + (len(problems) - bool(errors)),
        "no 5xx from /openapi.json-generated requests, with a token",
        "; ".join(problems) or f"status counts {shown} ({runs} runs)",
    )


# ---- 4. swaps under load ------------------------------------------------------------------


def swaps(work: Path, moves: int) -> Row:
    from tests.serving_helpers import serving, synthetic_project
    from tests.test_serving_swap import TWO_WORKERS, move

    project = synthetic_project(work / "p", versions=2, extra=TWO_WORKERS)
    plan = ["1", "2", "1", None, None, "2"]
    log = work / "load.jsonl"
    seconds = 4 + 2.5 * moves
    with serving(project) as running:
        load = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "load_client.py"),
                running.url,
                str(seconds),
                "8",
                str(log),
            ]
        )
        time.sleep(1.5)
        for i in range(moves):
            move(project, plan[i % len(plan)])
            time.sleep(2.0)
        load.wait(HANG_GUARD)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    failed = [r for r in rows if r["status"] != 200]
    versions = sorted({str(r["version"]) for r in rows if r["status"] == 200})
    return Row(
        "promotions/rollbacks under load",
        moves,
        len(failed),
        "no failed request during the swaps",
        f"{len(rows)} requests, {len(failed)} failed, versions answered {versions}"
        + (f"; first failure {failed[0]}" if failed else ""),
    )


# ---- 5. soak ------------------------------------------------------------------------------


def worker_pids(parent: int) -> list[int]:
    """The server's worker processes (its children but multiprocessing's resource tracker)."""
    children: list[int] = []
    for task in Path(f"/proc/{parent}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        children += [int(p) for p in text.split()]
    return [pid for pid in children if b"resource_tracker" not in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss(pid: int) -> int | None:
    try:
        import psutil  # optional: the same number, from /proc when it is absent

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    except Exception:  # the process is gone
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def soak(work: Path, seconds: int) -> Row:
    from tests.serving_helpers import serving, synthetic_project
    from tests.test_serving_swap import TWO_WORKERS

    project = synthetic_project(work / "p", versions=1, extra=TWO_WORKERS)
    log = work / "load.jsonl"
    samples: dict[int, list[int]] = {}
    with serving(project) as running:
        load = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "load_client.py"),
                running.url,
                str(seconds),
                "8",
                str(log),
            ]
        )
        while load.poll() is None:
            for pid in worker_pids(running.process.pid):
                value = rss(pid)
                if value is not None:
                    samples.setdefault(pid, []).append(value)
            time.sleep(1.0)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    failed = sum(r["status"] != 200 for r in rows)
    problems, shown = [], []
    for pid, values in samples.items():
        if len(values) < 8:
            problems.append(f"worker {pid}: only {len(values)} samples")
            continue
        q = len(values) // 4
        second, last = statistics.median(values[q : 2 * q]), statistics.median(values[-q:])
        flat = last <= second * (1 + SOAK_TOLERANCE) + SOAK_SLACK
        mb = [round(v / 2**20) for v in (values[0], values[-1], max(values), second, last)]
        shown.append(
            f"worker {pid}: start {mb[0]} MB, end {mb[1]} MB, max {mb[2]} MB, "
            f"Q2 median {mb[3]} MB, Q4 median {mb[4]} MB ({'flat' if flat else 'GROWING'})"
        )
        if not flat:
            problems.append(f"worker {pid} grew")
    if not samples:
        problems.append("no worker process found to sample")
    return Row(
        f"soak {seconds} s",
        len(rows),
        failed + len(problems),
        f"memory flat (Q4 median <= Q2 median +{SOAK_TOLERANCE:.0%} +16 MB), no failed request",
        "; ".join(shown + problems) + f"; {failed} of {len(rows)} requests failed",
    )


# ---- 6. the secret sweep ------------------------------------------------------------------


def secrets(work: Path, _count: int) -> Row:
    import httpx
    from tests.helpers import write_spec
    from tests.serving_helpers import SERVING, record
    from tests.test_lifecycle import SPEC, land

    from driftloop.serving.client import background_server, free_port

    password = "pw-" + os.urandom(8).hex()
    token = "tok-" + os.urandom(8).hex()
    secret_env = env(
        MLFLOW_TRACKING_URI=f"http://user:{password}@127.0.0.1:{free_port()}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="30",
        DRIFTLOOP_API_TOKENS=f"{token}:predict+feedback+admin+metrics",
    )
    project = work / "p"
    write_spec(project, SPEC + SERVING + "  first_model_wait_seconds: 0\n")
    land(project, "part-0.csv", 400, seed=1)
    outputs: dict[str, str] = {}
    for args in (["run"], ["-v", "run"], ["status", "--json"], ["status"], ["models"]):
        done = cli([*args, "-p", str(project)], secret_env)
        outputs[" ".join(args)] = done.stdout + done.stderr
    log = project / "serve.log"
    with background_server(
        project, log=log, env=secret_env, wait_ready=False, token=token
    ) as server:
        deadline = time.monotonic() + 300  # a hang guard: until the server has an answer
        while time.monotonic() < deadline:  # (the registry's error, 503, or a model, 200)
            try:
                ready = httpx.get(f"{server.url}/ready", timeout=30, headers=server.headers)
                if ready.status_code == 200 or "did not answer" in ready.text:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        for method, path, headers in [
            ("GET", "/ready", {}),
            ("GET", "/model", server.headers),
            ("POST", "/predict", server.headers),
            ("POST", "/predict", {"Authorization": f"Bearer {token}x"}),
            ("GET", "/metrics", server.headers),
        ]:
            answer = httpx.request(
                method, server.url + path, headers=headers, json=record(), timeout=30
            )
            outputs[f"{method} {path}"] = answer.text + str(answer.headers)
    # Every file the project wrote, and a dump of the state database.
    db = project / "state.db"
    if db.is_file():
        with sqlite3.connect(db) as connection:
            outputs["state.db dump"] = "\n".join(connection.iterdump())
    swept = [p for p in project.rglob("*") if p.is_file()]
    leaks = [name for name, text in outputs.items() if password in text or token in text]
    if "user:***@" not in outputs["run"]:  # else the sweep proves nothing: the URI never showed
        leaks.append("run output: the masked URI never appeared (the registry was not reached)")
    for path in swept:
        data = path.read_bytes()
        if password.encode() in data or token.encode() in data:
            leaks.append(str(path.relative_to(project)))
    return Row(
        "secret sweep",
        len(swept) + len(outputs),
        len(leaks),
        "MLflow password and API token absent from every file written and every output",
        f"{len(swept)} files, {len(outputs)} outputs" + (f"; leaked in {leaks}" if leaks else ""),
    )


# ---- the table ----------------------------------------------------------------------------

TRIALS: dict[str, Callable[[Path, int], Row]] = {
    "kill9": kill9,
    "fuzz-csv": fuzz_csv,
    "fuzz-parquet": fuzz_parquet,
    "schemathesis": schemathesis,
    "swaps": swaps,
    "soak": soak,
    "secrets": secrets,
}
FULL = {
    "kill9": 20,
    "fuzz-csv": 250,
    "fuzz-parquet": 250,
    "schemathesis": 1000,
    "swaps": 6,
    "soak": 120,
    "secrets": 1,
}
QUICK = {
    "kill9": 4,
    "fuzz-csv": 20,
    "fuzz-parquet": 20,
    "schemathesis": 100,
    "swaps": 3,
    "soak": 20,
    "secrets": 1,
}
HEADER = f"| {'trial':<34} | {'count':>6} | {'failures':>8} | {'result':<6} | checked |"


def run_trial(name: str, work: Path, size: int) -> Row:
    """One trial; an exception is a failure of the trial, with its last line as the detail."""
    started = time.monotonic()
    try:
        row = TRIALS[name](work, size)
    except Exception as exc:
        last = traceback.format_exception_only(exc)[-1].strip()
        row = Row(name, 0, 1, "the trial ran to the end", f"crashed: {last}"[:800])
    row.detail = f"{row.detail} [{time.monotonic() - started:.0f} s]".strip()
    return row


def line(row: Row) -> str:
    cells = f"| {row.trial:<34} | {row.count:>6} | {row.failures:>8} | {row.result:<6} |"
    return f"{cells} {row.checked} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help=f"run only this trial: {', '.join(TRIALS)}"
    )
    parser.add_argument("--soak-seconds", type=int, default=None, help="soak length (120)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.soak_seconds is not None:
        sizes["soak"] = args.soak_seconds
    names = [n for n in TRIALS if not args.only or any(n.startswith(o) for o in args.only)]
    unknown = [o for o in args.only or [] if not any(n.startswith(o) for n in TRIALS)]
    if unknown:
        parser.error(f"--only {unknown[0]}: no such trial; the trials are {', '.join(TRIALS)}")
    work = Path(tempfile.mkdtemp(prefix="driftloop-reliability-"))
    print(HEADER, flush=True)
    print("|" + "|".join("-" * n for n in (36, 8, 10, 8, 9)) + "|", flush=True)
    rows = []
    try:
        for name in names:
            row = run_trial(name, work / name, sizes[name])
            rows.append(row)
            print(line(row), flush=True)
    finally:
        if args.keep:
            print(f"work files: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    for row in rows:
        print(f"- {row.trial}: {row.detail}")
    return 0 if all(r.failures == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
