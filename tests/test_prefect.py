"""The lifecycle under a real Prefect server, fanned out on a real Dask LocalCluster.

Run by ``make test-prefect`` in ``.venv-prefect`` (the prefect extra; Prefect 3.9 needs an
older FastAPI than the project's .venv holds). One server for the module; the story test
serves the project's deployments with ``driftloop prefect serve`` and lets events drive it:
files land and ``driftloop prefect ingest`` sends ``driftloop.DataArrived``; the triggered
flow runs prep and features on two Dask worker processes, trains the first model and
promotes it; a drifted week is found drifted by its check, retrained on and promoted. A
Dask worker killed in the middle of a features call is replaced and the call finished,
nothing done twice. Every wait is for an event (a state the API or the state database
reports), with a generous hang guard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from driftloop.core.errors import SpecError, TransientError
from driftloop.core.layout import Layout, is_complete
from driftloop.core.state import StateDB
from driftloop.serving.client import background_server

from .fixtures.prefect_server import PrefectServer, require_prefect
from .helpers import write_spec

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

CLI = [sys.executable, "-m", "driftloop.cli"]
HANG_GUARD = 600.0  # seconds: a stuck flow fails the test, a slow one does not

SPEC = """
name: synth
task: classification
target: y
time_column: t
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    t: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    x1: {dtype: float}
    x2: {dtype: float}
    c: {dtype: str}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
ingest: {settle_seconds: 0}
features: {function: "feats:extra"}
retrain: {every_batches: 0}
engine: {name: dask, workers: 2, threads_per_worker: 1}
"""

# The user's feature function, with two test hooks that leave its code (and so every key)
# unchanged: with barrier/ present, a call waits until two calls are inside at once (serial
# calls would wait out the guard and fail: the proof of parallel calls); with kill-once
# present, the first call to see it removes it and kills its own process (a Dask worker).
FEATS = """
import os, signal, time, uuid
from pathlib import Path
import polars as pl

HERE = Path(__file__).resolve().parent


def extra(frame):
    barrier = HERE / "barrier"
    if barrier.is_dir():
        (barrier / uuid.uuid4().hex).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the other batch's features call never came in parallel")
            time.sleep(0.05)
    kill = HERE / "kill-once"
    try:
        kill.unlink()
    except FileNotFoundError:
        pass
    else:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"x1_x2": pl.col("x1") * pl.col("x2")}
"""


def land(project: Path, name: str, rows: int, seed: int, start_day: int, drift: bool) -> None:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows) + (2.0 if drift else 0.0), rng.normal(size=rows)
    c = rng.choice(["a", "b", "c"], rows)
    # the drifted week: x1 moved, and what it says about y turned around
    logit = (-1.5 * (x1 - 2.0) if drift else 1.5 * x1) - x2 + (c == "a") * 1.0
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    t = [f"2024-01-{start_day + i * 6 // rows:02d} 10:{i % 60:02d}:00" for i in range(rows)]
    frame = pl.DataFrame({"t": t, "x1": x1.round(4), "x2": x2.round(4), "c": c, "y": y})
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_csv(folder / name)


def api(server: PrefectServer, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST (GET without a body) to the server's API; a 503 or 429 is tried again, as
    Prefect's own client does (its server answers 503 while its SQLite database is busy,
    as on a loaded machine)."""
    deadline = time.monotonic() + HANG_GUARD
    pause = 0.5
    while True:
        url = f"{server.api_url}{path}"
        response = (
            httpx.get(url, timeout=30) if body is None else httpx.post(url, json=body, timeout=30)
        )
        if response.status_code not in (429, 503) or time.monotonic() > deadline:
            response.raise_for_status()
            return response.json()
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def wait_for(what: str, found: Callable[[], Any], proc: subprocess.Popen[str] | None) -> Any:
    deadline = time.monotonic() + HANG_GUARD
    while not (value := found()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driftloop prefect serve ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within the hang guard")
        time.sleep(0.5)
    return value


def flow_runs(server: PrefectServer) -> list[dict[str, Any]]:
    runs = api(server, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
    return [r for r in runs if r["name"] and r["parameters"].get("project")]


def settled(server: PrefectServer, count: int) -> list[dict[str, Any]] | None:
    """The lifecycle's runs once at least ``count`` exist and none is still to finish."""
    runs = [r for r in flow_runs(server) if "trigger_event" in r["parameters"]]
    if len(runs) < count or any(r["state_type"] not in ("COMPLETED", "FAILED") for r in runs):
        return None
    return runs


def champion(project: Path) -> str | None:
    with StateDB(Layout(project).state_db) as db:
        decisions = [e for e in db.events(limit=10_000) if e["type"] == "ModelPromoted"]
    return decisions[-1]["version"] if decisions else None


def events(project: Path) -> list[dict[str, Any]]:
    with StateDB(Layout(project).state_db) as db:
        return db.events(limit=10_000)


def cli(project: Path, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [*CLI, *args, "-p", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_events_drive_the_lifecycle_on_dask(prefect_server: PrefectServer, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    write_spec(project, SPEC)
    (project / "feats.py").write_text(FEATS)
    env = {**os.environ, **prefect_server.env, "OMP_NUM_THREADS": "1"}
    serve = subprocess.Popen(
        [*CLI, "prefect", "serve", "-p", str(project)],
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        story(prefect_server, project, serve, env)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=60)


def story(
    server: PrefectServer, project: Path, serve: subprocess.Popen[str], env: dict[str, str]
) -> None:
    deployments = wait_for(
        "deployments",
        lambda: (
            len(api(server, "/deployments/filter", {})) >= 2
            and api(server, "/deployments/filter", {})
        ),
        serve,
    )
    names = sorted(d["name"] for d in deployments)
    assert names == ["synth", "synth"]  # the lifecycle's and the monitor's, by project
    assert any(d["schedules"] for d in deployments)  # the prediction-log monitor's
    wait_for(  # the trigger's automation exists before the first event is sent
        "the lifecycle's trigger",
        lambda: api(server, "/automations/filter", {}),
        serve,
    )

    # Week 1: two batches land together (two files, ingested one after the other), and one
    # DataArrived each goes to the bus
    (project / "barrier").mkdir()
    land(project, "a.csv", 500, seed=1, start_day=1, drift=False)
    cli(project, "stage", "ingest", env=env)
    land(project, "b.csv", 500, seed=2, start_day=8, drift=False)
    assert "DataArrived sent" in cli(project, "prefect", "ingest", env=env)
    first = wait_for("the first lifecycle runs", lambda: settled(server, 2), serve)
    assert champion(project) == "1"
    shutil_rmtree(project / "barrier")  # the server's feature calls come one at a time
    # a real driftloop serve follows the champion the flows promote
    server_log = project.parent / "model-server.log"
    with background_server(project, log=server_log, env={"OMP_NUM_THREADS": "1"}) as model:
        wait_for("v1 served", lambda: served(model.url) == "1", serve)
        drifted_week(server, project, serve, env, first)
        wait_for("v2 served, with no restart", lambda: served(model.url) == "2", serve)
    monitor_run(server, deployments, serve)


def served(url: str) -> str | None:
    """The model version ``driftloop serve`` answers /predict with (None: not answering)."""
    record = {"t": "2024-01-20 10:00:00", "x1": 0.3, "x2": -0.1, "c": "a"}
    try:
        answer = httpx.post(f"{url}/predict", json=record, timeout=10)
    except httpx.TransportError:
        return None
    return str(answer.json()["model"]["version"]) if answer.status_code == 200 else None


def drifted_week(
    server: PrefectServer,
    project: Path,
    serve: subprocess.Popen[str],
    env: dict[str, str],
    first: list[dict[str, Any]],
) -> None:
    assert [r["state_type"] for r in first] == ["COMPLETED"] * len(first)

    log = events(project)
    batches = [e["batch_id"] for e in log if e["type"] == "DataArrived"]
    assert len(batches) == 2
    # each run names the event that started it, and the API holds that event
    for run in first:
        assert run["parameters"]["trigger_event"] == "driftloop.DataArrived"
        found = api(
            server,
            "/events/filter",
            {"filter": {"id": {"id": [run["parameters"]["trigger_id"]]}}},
        )["events"]
        assert [e["event"] for e in found] == ["driftloop.DataArrived"]
        assert found[0]["payload"]["batch_id"] in batches
    # the two batches' prep ran on two Dask worker processes (and their features, in
    # parallel: the barrier let neither through alone)
    tasks = api(server, "/task_runs/filter", {})
    preps = [t for t in tasks if t["name"].startswith("prep --batch")]
    assert len(preps) == 2 and all(t["state_type"] == "COMPLETED" for t in preps)
    workers = {ran_on(server, t) for t in preps}
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)

    # Week 2, drifted: its check finds drift, the policy retrains, the gate promotes. The
    # Dask worker running its features call is killed in the middle of it.
    (project / "kill-once").touch()
    land(project, "c.csv", 500, seed=3, start_day=15, drift=True)
    assert "DataArrived sent" in cli(project, "prefect", "ingest", env=env)
    wait_for("the drifted week's champion", lambda: champion(project) == "2", serve)
    later = wait_for(
        "the runs the drifted week triggered",
        lambda: (runs := settled(server, 3)) and _drift_run(runs) and runs,
        serve,
    )
    assert not (project / "kill-once").exists()  # the hook did kill a worker
    assert [r["state_type"] for r in later] == ["COMPLETED"] * len(later)
    triggers = Counter(r["parameters"]["trigger_event"] for r in later)
    assert triggers["driftloop.DataArrived"] == 3 and triggers["driftloop.DriftDetected"] >= 1

    log = events(project)
    new = [e["batch_id"] for e in log if e["type"] == "DataArrived"][-1]
    assert any(e["type"] == "DriftDetected" for e in log)
    retrain = [e for e in log if e["type"] == "RetrainRequested"]
    # the check found the week drifted and the model decayed on its labels: either retrains
    assert retrain[-1]["reason"].startswith(("drift", "performance degraded"))
    assert retrain[-1]["new_batches"] == [new]
    started = Counter((e["stage"], e["batch_id"]) for e in log if e["type"] == "StageStarted")
    succeeded = Counter((e["stage"], e["batch_id"]) for e in log if e["type"] == "StageSucceeded")
    # the killed call ran again and finished; nothing else of any batch ran twice
    assert started[("features", new)] == 2 and succeeded[("features", new)] == 1
    assert {k: v for k, v in started.items() if k != ("features", new)} == {
        k: 1 for k in started if k != ("features", new)
    }
    layout = Layout(project)
    assert all(is_complete(layout.features / b) for b in [*batches, new])


def monitor_run(
    server: PrefectServer, deployments: list[dict[str, Any]], serve: subprocess.Popen[str]
) -> None:
    """The prediction-log monitor's deployment runs (as its schedule would start it) over
    the few predictions the server logged, and completes whatever it finds."""
    (monitor,) = [d for d in deployments if d["schedules"]]
    made = api(server, f"/deployments/{monitor['id']}/create_flow_run", {})
    run = wait_for(
        "the monitor's run",
        lambda: (
            (r := api(server, f"/flow_runs/{made['id']}"))
            and r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
            and r
        ),
        serve,
    )
    assert run["state_type"] == "COMPLETED", run["state"]


def _drift_run(runs: list[dict[str, Any]]) -> bool:
    return any(r["parameters"]["trigger_event"] == "driftloop.DriftDetected" for r in runs)


def ran_on(server: PrefectServer, task_run: dict[str, Any]) -> str:
    """Where a stage call ran, as its task run's log line says."""
    logs = api(server, "/logs/filter", {"logs": {"task_run_id": {"any_": [task_run["id"]]}}})
    lines = [entry["message"] for entry in logs if " on " in entry["message"]]
    assert lines, logs
    return str(lines[-1].split(" on ")[1].split(" ")[0])


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_prefect_retries_follow_driftloops_transient_permanent_split() -> None:
    require_prefect()
    from prefect.states import Failed

    from driftloop.orchestration.prefect_flow import (
        StageFailedError,
        TransientStageError,
        _transient,
    )

    def retried(exc: BaseException) -> bool:
        return _transient(None, None, Failed(data=exc))

    assert retried(TransientStageError("prep b: unexpected OSError"))
    assert retried(ConnectionResetError("a Dask worker went away"))
    assert retried(TransientError("the registry did not answer"))
    assert not retried(StageFailedError("prep b: too many bad rows"))
    assert not retried(SpecError("no stage 'prepp'"))


def test_prep_and_features_are_one_stretch_chained_by_batch_and_the_model_waves_are_not(
    tmp_path: Path,
) -> None:
    require_prefect()
    from driftloop.core.stage import StageCall
    from driftloop.orchestration.prefect_flow import _stretches, stage_task

    prep = [StageCall("prep", "a"), StageCall("prep", "b")]
    features = [StageCall("features", "a"), StageCall("features", "b")]
    checks = [StageCall("monitor", "a", champion="1")]
    waves = [prep, features, [StageCall("train", reason="drift")], [StageCall("promote")], checks]
    assert list(_stretches(waves)) == [
        [prep, features],  # submitted together: no barrier between them
        [[StageCall("train", reason="drift")]],
        [[StageCall("promote")]],
        [checks],
    ]
    # a features call after a prep that did not run nor find its output is not made (the
    # project does not exist: calling the stage would fail)
    skipped = {"stage": "prep", "batch_id": "a", "outcome": "skipped", "seconds": 0.0}
    found = stage_task.fn(str(tmp_path / "none"), features[0].to_json(), "f", after=skipped)
    assert found["outcome"] == "blocked" and found["stage"] == "features"


def test_prefects_cache_key_is_the_run_key_while_its_output_is_committed(tmp_path: Path) -> None:
    require_prefect()
    import driftloop
    from driftloop.orchestration.prefect_flow import _run_key
    from driftloop.orchestration.runner import stage_def

    from .test_state_store import TINY

    write_spec(tmp_path, TINY.replace('state: {url: "URL"}\n', ""))
    folder = tmp_path / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("x,y\n1,2\n3,4\n")
    driftloop.run(tmp_path)
    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        (batch,) = db.batches()
        runs = [e for e in db.events(limit=100) if e["type"] == "StageSucceeded"]
    prep_key = next(e["key"] for e in runs if e["stage"] == "prep")
    call = {"stage": "prep", "batch_id": batch.batch_id}
    params = {"project": str(tmp_path), "call": call}
    assert _run_key(None, params) == f"driftloop-tiny-prep-{prep_key}"
    assert _run_key(None, {"project": str(tmp_path), "call": {"stage": "ingest"}}) is None
    assert stage_def("prep").keyed
    # an output withdrawn (or deleted) is never taken for done: Prefect runs the task again
    (layout.processed / batch.batch_id / "_SUCCESS").unlink()
    assert _run_key(None, params) is None


def test_driftloop_prefect_run_is_one_pass_as_a_flow_run(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    from .test_state_store import TINY

    write_spec(tmp_path, TINY.replace('state: {url: "URL"}\n', ""))  # engine: local
    folder = tmp_path / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("x,y\n1,2\n3,4\n-1,5\n")  # one row breaks x's min
    env = {**os.environ, **prefect_server.env, "OMP_NUM_THREADS": "1"}
    out = cli(tmp_path, "prefect", "run", env=env)
    lines = [line.split(": ")[0] for line in out.splitlines() if ": ran (" in line]
    assert [line.split(" ")[0] for line in lines] == ["prep", "features"], out
    batch = lines[0].split(" ")[1]
    runs = api(prefect_server, "/flow_runs/filter", {})
    mine = [r for r in runs if r["parameters"].get("project") == str(tmp_path.resolve())]
    assert [r["state_type"] for r in mine] == ["COMPLETED"]
    layout = Layout(tmp_path)
    assert is_complete(layout.processed / batch) and is_complete(layout.quarantine / batch)
    # the second pass finds every output current: no task runs
    assert "nothing to do" in cli(tmp_path, "prefect", "run", env=env)


def test_a_call_that_fails_on_its_data_fails_the_flow_run_once_not_retried(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    from .test_state_store import TINY

    write_spec(tmp_path, TINY.replace('state: {url: "URL"}\n', ""))
    folder = tmp_path / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("x,y\n-1,2\n-3,4\n")  # every row breaks x's min: too many bad
    env = {**os.environ, **prefect_server.env, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [*CLI, "prefect", "run", "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 stage call(s) failed: prep --batch" in out.stdout
    assert "driftloop batches" in out.stdout
    with StateDB(Layout(tmp_path).state_db) as db:
        started = [e for e in db.events(limit=100) if e["type"] == "StageStarted"]
    assert [e["stage"] for e in started] == ["prep"]  # once: Prefect did not retry it
    runs = api(prefect_server, "/flow_runs/filter", {})
    mine = [r for r in runs if r["parameters"].get("project") == str(tmp_path.resolve())]
    assert [r["state_type"] for r in mine] == ["FAILED"]


def test_deployments_on_a_work_pool_run_on_a_prefect_worker(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    """``driftloop prefect deploy`` creates the deployments on a process work pool and
    returns; a real ``prefect worker start --pool`` process runs the flow run a
    ``DataArrived`` triggers (the machine that runs flows needs only the worker)."""
    from .test_state_store import TINY

    project = tmp_path / "proj"
    write_spec(project, TINY.replace('state: {url: "URL"}\n', ""))
    env = {**os.environ, **prefect_server.env, "OMP_NUM_THREADS": "1"}
    out = cli(project, "prefect", "deploy", "--pool", "driftloop-test", env=env)
    assert "deployment driftloop-lifecycle/tiny on work pool 'driftloop-test'" in out, out
    (deployment,) = [
        d for d in api(prefect_server, "/deployments/filter", {}) if d["name"] == "tiny"
    ]
    assert deployment["work_pool_name"] == "driftloop-test"
    assert deployment["entrypoint"] == "driftloop.orchestration.prefect_flow.lifecycle"
    pool = api(prefect_server, "/work_pools/driftloop-test")
    assert pool["type"] == "process"
    # a second deploy updates the same deployments
    cli(project, "prefect", "deploy", "--pool", "driftloop-test", env=env)
    assert (
        len([d for d in api(prefect_server, "/deployments/filter", {}) if d["name"] == "tiny"]) == 1
    )

    prefect = Path(sys.executable).parent / "prefect"
    worker_log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [str(prefect), "worker", "start", "--pool", "driftloop-test", "--type", "process"],
        stdout=worker_log.open("w"),
        stderr=subprocess.STDOUT,
        env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        cwd=tmp_path,  # not the project: the flow is found by its module path
        start_new_session=True,
    )
    try:
        wait_for(  # the trigger's automation exists before the event is sent
            "the lifecycle's trigger",
            lambda: api(prefect_server, "/automations/filter", {}),
            worker,
        )
        folder = project / "data" / "raw" / "s"
        folder.mkdir(parents=True)
        (folder / "a.csv").write_text("x,y\n1,2\n3,4\n")
        assert "DataArrived sent" in cli(project, "prefect", "ingest", env=env)

        def done() -> list[dict[str, Any]] | None:
            runs = [
                r
                for r in flow_runs(prefect_server)
                if r["deployment_id"] == deployment["id"]
                and r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
            ]
            return runs or None

        (run,) = wait_for("the flow run on the worker", done, worker)
        assert run["state_type"] == "COMPLETED", (run["state"], worker_log.read_text()[-3000:])
        assert run["parameters"]["trigger_event"] == "driftloop.DataArrived"
        assert run["work_pool_name"] == "driftloop-test"
        (batch,) = [e["batch_id"] for e in events(project) if e["type"] == "DataArrived"]
        layout = Layout(project)
        assert is_complete(layout.processed / batch) and is_complete(layout.features / batch)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=60)
