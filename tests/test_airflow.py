"""``driftloop export airflow``: the DAG it writes, checked as Python here and run by Airflow 3.

The unit tests read the generated file with ``ast`` (no Airflow needed). The ``airflow``
tests (``make test-airflow``) run Airflow from its own virtualenv (``.venv-airflow``; see
``tests/fixtures/airflow.py``): ``airflow dags test`` on SQLite runs the DAG against a real
project; the slow one starts ``airflow standalone`` with the SQS watcher, and an object put
into the moto server's bucket starts the DAG run, which succeeds. Every wait is for an
event (a state Airflow's REST API reports), with a generous hang guard.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftloop.core.layout import Layout, is_complete
from driftloop.core.spec import parse_spec, read_yaml
from driftloop.core.state import StateDB
from driftloop.export.airflow import dag_id, raw_root, render
from driftloop.orchestration.runner import STAGES

from .fixtures.airflow import AirflowHome, json_of, make_home, stop_group
from .fixtures.moto import S3Env
from .helpers import write_spec
from .s3_notifications import to_sqs
from .test_lifecycle import SPEC, land

CLI = [sys.executable, "-m", "driftloop.cli"]
HANG_GUARD = 900.0  # seconds: a stuck run fails the test, a slow machine does not
API_GUARD_SECONDS = 120.0  # one request to Airflow's API (a loaded machine answers slowly)
DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, check=False, env=env, timeout=HANG_GUARD
    )


def stage_calls(text: str) -> set[str]:
    """The stages the DAG calls: ``driftloop("stage", NAME, ...)`` anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "driftloop"
            and len(node.args) >= 2
            and all(isinstance(a, ast.Constant) for a in node.args[:2])
        ):
            first, second = (a.value for a in node.args[:2])  # type: ignore[attr-defined]
            if first == "stage":
                found.add(second)
    return found


def spec_of(text: str) -> Any:
    return parse_spec(read_yaml(text))


# -- the generated file, without Airflow ------------------------------------------------------


def test_the_dag_is_python_that_calls_every_stage_the_plan_can_ask_for(tmp_path: Path) -> None:
    text = render(spec_of(SPEC), project=tmp_path, spec_file="driftloop.yaml", driftloop="dl")
    compile(text, "dag.py", "exec")  # valid Python, not only parseable
    assert stage_calls(text) == set(STAGES)  # ingest, prep, features, monitor, train, promote
    tree = ast.parse(text)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("driftloop") for m in imported)  # Airflow's venv: none
    assert dag_id(spec_of(SPEC)) == "driftloop_synth" and "dag_id='driftloop_synth'," in text
    assert f"Asset(uri={(tmp_path / 'data/raw/s').as_uri()!r}" in text
    assert "schedule=[RAW]" in text and "SqsSensorTrigger" not in text
    # prep and features are mapped over what ingest returns; a branch on the retrain policy
    assert "prep.expand(batch_id=ingest())" in text
    assert "features.expand(batch_id=prepped)" in text
    assert "@task.branch" in text and 'return "train"' in text
    assert "AirflowFailException" in text and "EXIT_RETRY_LATER = 5" in text


def test_a_monitoring_schedule_adds_a_dag_that_monitors_the_prediction_log(
    tmp_path: Path,
) -> None:
    spec = spec_of(SPEC + "monitoring: {schedule_minutes: 15}\n")
    text = render(spec, project=tmp_path, spec_file="driftloop.yaml", driftloop="dl")
    compile(text, "dag.py", "exec")
    assert "dag_id='driftloop_synth_prediction_log'," in text
    assert "schedule=timedelta(minutes=15.0)" in text and "catchup=False" in text
    assert '"monitor", answers=(0, EXIT_DRIFT, EXIT_COLUMN_DRIFT, EXIT_NOTHING_TO_MONITOR)' in text
    assert "EXIT_NOTHING_TO_MONITOR = 6" in text
    assert "retrain_policy(monitor_predictions())" in text
    for off in ("monitoring: {schedule_minutes: null}\n", "model: {enabled: false}\n"):
        plain = render(spec_of(SPEC + off), project=tmp_path, spec_file="x", driftloop="dl")
        assert "prediction_log" not in plain and "@dag(" in plain
        compile(plain, "dag.py", "exec")


def test_an_s3_project_with_events_gets_an_sqs_watcher_on_its_raw_prefix(tmp_path: Path) -> None:
    spec = spec_of(
        SPEC.replace("data/raw/s/*.csv", "s3://landing/raw/s/*.csv").replace(
            "ingest: {settle_seconds: 0}", f"ingest: {{events: {{queue: '{QUEUE_URL}'}}}}"
        )
    )
    text = render(
        spec, project=tmp_path, spec_file="driftloop.yaml", driftloop="dl", queue_url=QUEUE_URL
    )
    compile(text, "dag.py", "exec")
    assert "Asset(uri='s3://landing/raw/s', name='driftloop_synth_raw', watchers=[Asset" in text
    assert f"sqs_queue={QUEUE_URL!r}" in text and "wait_time_seconds=20" in text
    with pytest.raises(Exception, match="needs its URL"):
        render(spec, project=tmp_path, spec_file="driftloop.yaml", driftloop="dl")


def test_sources_in_two_folders_schedule_on_either(tmp_path: Path) -> None:
    two = SPEC.replace(
        "sources: [{name: s, path: data/raw/s/*.csv}]",
        "sources: [{name: s, path: data/raw/s/*.csv}, "
        "{name: k, path: 's3://b/k/*.csv', join: {on: [c]}}]",
    )
    text = render(spec_of(two), project=tmp_path, spec_file="driftloop.yaml", driftloop="dl")
    compile(text, "dag.py", "exec")
    assert "schedule=RAW[0] | RAW[1]" in text
    assert "name='driftloop_synth_raw_2'" in text and "'s3://b/k'" in text


@pytest.mark.parametrize(
    ("path", "root"),
    [
        ("s3://bucket/raw/orders/*.csv", "s3://bucket/raw/orders"),
        ("s3://bucket/raw/**/*.parquet", "s3://bucket/raw"),
        ("s3://bucket/*.csv", "s3://bucket"),
        ("data/raw/hours/*.csv", "PROJECT/data/raw/hours"),
        ("data/raw/day-[0-9].csv", "PROJECT/data/raw"),
        ("data/raw/hours", "PROJECT/data/raw/hours"),
        ("data/raw/hours/one.csv", "PROJECT/data/raw/hours"),
        ("*.csv", "PROJECT"),
    ],
)
def test_the_raw_root_is_the_folder_above_the_glob(path: str, root: str, tmp_path: Path) -> None:
    expected = root.replace("PROJECT", tmp_path.resolve().as_uri())
    assert raw_root(path, tmp_path) == expected


def test_export_writes_the_dag_and_refuses_a_folder_without_a_spec(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write_spec(project, SPEC)
    done = cli("export", "airflow", "-p", str(project))
    assert done.returncode == 0, done.stderr
    written = project / "airflow" / "driftloop_synth.py"
    assert f"wrote {written}" in " ".join(done.stdout.split())
    assert repr(str(project.resolve())) in written.read_text()
    assert repr(DRIFTLOOP) in written.read_text()  # the tasks call this venv's driftloop
    missing = cli("export", "airflow", "-p", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no spec file here" in missing.stderr


def test_export_refuses_an_events_queue_it_cannot_find(s3_env: S3Env, tmp_path: Path) -> None:
    write_spec(
        tmp_path,
        SPEC.replace("data/raw/s/*.csv", s3_env.url("raw/s/*.csv")).replace(
            "ingest: {settle_seconds: 0}", "ingest: {events: 'sqs://no-such-queue'}"
        ),
    )
    done = cli("export", "airflow", "-p", str(tmp_path), "--out", str(tmp_path / "dags"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'no-such-queue'" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "dags").exists()


def test_a_stage_report_says_whether_running_it_again_may_succeed(tmp_path: Path) -> None:
    """The split the DAG's retries follow (``driftloop stage`` exits 5 on ``retry``)."""
    from driftloop.core.errors import QuarantineLimitError
    from driftloop.core.stage import Work
    from driftloop.orchestration.runner import keyed_run

    def flaky(started: float) -> dict[str, object]:
        raise OSError("the disk hiccuped")

    def invalid(started: float) -> dict[str, object]:
        raise QuarantineLimitError("too many bad rows")

    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        out = tmp_path / "out"
        machine = keyed_run(db, layout, "prep", Work("k1", out, flaky, "b1"))
        assert (machine.outcome, machine.retry) == ("failed", True)
        data = keyed_run(db, layout, "prep", Work("k2", out, invalid, "b2"))
        assert (data.outcome, data.retry) == ("failed", False)
        assert data.to_json()["retry"] is False
        assert db.claim("prep:b3", "elsewhere:1:x", seconds=600, now=time.time())
        held = keyed_run(db, layout, "prep", Work("k3", out, flaky, "b3"), unit="prep:b3")
        assert held.outcome == "waiting"  # the CLI exits 5 for it too


def test_a_stage_call_that_fails_on_its_data_exits_1_not_5(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + 'features: {function: "feats:extra"}\n')
    (tmp_path / "feats.py").write_text("def extra(frame):\n    raise RuntimeError('no')\n")
    land(tmp_path, "a.csv", 60, seed=1)
    p = str(tmp_path)
    assert cli("stage", "ingest", "-p", p).returncode == 0
    [batch] = [c["batch_id"] for c in json.loads(cli("plan", "-p", p, "--json").stdout)["waves"][0]]
    assert cli("stage", "prep", "-p", p, "--batch", batch).returncode == 0
    failed = cli("stage", "features", "-p", p, "--batch", batch, "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    report = json.loads(failed.stdout)
    assert report["retry"] is False and "raised RuntimeError: no" in report["error"]


# -- under Airflow ------------------------------------------------------------------------------


def events_of(project: Path) -> list[dict[str, Any]]:
    with StateDB(Layout(project).state_db) as db:
        return db.events_after(0)


def export_into(project: Path, home: AirflowHome) -> Path:
    done = cli("export", "airflow", "-p", str(project), "--out", str(home.dags))
    assert done.returncode == 0, done.stderr
    return home.dags / "driftloop_synth.py"


@pytest.mark.airflow
def test_airflow_dags_test_runs_the_lifecycle_on_a_real_project(tmp_path: Path) -> None:
    project = tmp_path / "synth"
    write_spec(project, SPEC)
    land(project, "week-1.csv", 600, seed=1)
    home = make_home(tmp_path)
    export_into(project, home)
    # the DAG imports cleanly where Airflow parses it
    home.run("dags", "reserialize")
    errors = home.run("dags", "list-import-errors", "--output", "json")
    assert json_of(errors.stdout) == [], errors.stdout
    listed = json_of(home.run("dags", "list", "--output", "json").stdout)
    # the lifecycle, and the prediction log's monitor (monitoring.schedule_minutes: 60)
    assert sorted(d["dag_id"] for d in listed) == [
        "driftloop_synth",
        "driftloop_synth_prediction_log",
    ]
    done = home.run("dags", "test", "driftloop_synth", check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    layout = Layout(project)
    [batch] = [p.name for p in layout.features.iterdir()]
    assert is_complete(layout.processed / batch) and is_complete(layout.features / batch)
    kinds = [e["type"] for e in events_of(project)]
    assert "ModelRegistered" in kinds and "ModelPromoted" in kinds
    # the tasks ran the stages (not a pass): each once, none failed
    started = [e["stage"] for e in events_of(project) if e["type"] == "StageStarted"]
    assert sorted(started) == ["features", "prep", "promote", "train"]
    assert "StageFailed" not in kinds
    # nothing left to do: the plan is empty
    plan = json.loads(cli("plan", "-p", str(project), "--json").stdout)
    assert plan["waves"] == []


@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.xdist_group("serving")
def test_the_prediction_log_dag_finds_decay_in_what_serving_logged_and_retrains(
    tmp_path: Path, s3_env: S3Env
) -> None:
    from driftloop.pipeline import run

    from .serving_helpers import SERVING, serving
    from .test_predlog_s3 import drifted_traffic

    project = tmp_path / "synth"
    write_spec(
        project,
        SPEC
        + SERVING
        + "retrain: {every_batches: 0}\n"  # new data alone never trains: decay does
        + "monitoring: {permutations: 99, schedule_minutes: 30}\n"
        + f"outputs: {s3_env.url('out')}\n",
    )
    for i in range(2):  # a champion, then a batch it never saw (checked, not trained on)
        land(project, f"part-{i}.csv", 800, seed=i + 1, start_day=3 * i)
        done = run(project)
        assert not done.failed, [(r.stage, r.error) for r in done.failed]
    home = make_home(tmp_path, s3_env.server.env())  # the tasks' driftloop reads the bucket
    export_into(project, home)
    # before any traffic: nothing logged, so nothing to monitor: said, not failed
    quiet = home.run("dags", "test", "driftloop_synth_prediction_log", check=False)
    assert quiet.returncode == 0, quiet.stdout[-6000:] + quiet.stderr[-6000:]
    assert "nothing to monitor" in quiet.stdout + quiet.stderr
    assert [e["stage"] for e in events_of(project) if e["type"] == "StageStarted"].count(
        "train"
    ) == 1
    with serving(project) as server, server.client() as client:
        drifted_traffic(client, np.random.default_rng(7), 8)  # logged to the bucket
    tested = home.run("dags", "test", "driftloop_synth_prediction_log", check=False)
    assert tested.returncode == 0, tested.stdout[-6000:] + tested.stderr[-6000:]
    events = events_of(project)
    kinds = [e["type"] for e in events]
    assert "PerformanceDegraded" in kinds
    started = [e["stage"] for e in events if e["type"] == "StageStarted"]
    assert started.count("train") == 2  # the first pass's, and the schedule's
    assert [e["version"] for e in events if e["type"] == "ModelRegistered"] == ["1", "2"]


@pytest.mark.airflow
def test_a_failure_of_the_data_fails_its_task_once_without_a_retry(tmp_path: Path) -> None:
    project = tmp_path / "synth"
    write_spec(project, SPEC)
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("t,x1,x2,c,y\nnot a time,1,2,a,maybe\n")  # all rows bad
    home = make_home(tmp_path)
    export_into(project, home)
    done = home.run("dags", "test", "driftloop_synth", check=False)
    output = done.stdout + done.stderr
    assert "AirflowFailException" in output or "not retried" in output, output[-6000:]
    started = [e["stage"] for e in events_of(project) if e["type"] == "StageStarted"]
    assert started == ["prep"]  # once: Airflow did not retry it, and nothing ran after it
    assert "quarantine" in output


# -- airflow standalone, woken by the bucket's notifications --------------------------------------


def api_get(base: str, token: str, path: str) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{base}{path}", headers=headers, timeout=API_GUARD_SECONDS)
    answer.raise_for_status()
    return answer.json()


def token_of(base: str) -> str | None:
    """A token of the simple auth manager (every user an admin: no password asked)."""
    import httpx

    try:
        answer = httpx.get(f"{base}/auth/token", timeout=API_GUARD_SECONDS)
    except httpx.HTTPError:
        return None
    if answer.status_code not in (200, 201):
        return None
    found: str = answer.json()["access_token"]
    return found


def until(what: str, found: Any, process: subprocess.Popen[bytes], log: Path) -> Any:
    import httpx

    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        try:
            value = found()
        except httpx.HTTPError:  # not up yet, or too busy to answer: asked again
            value = None
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"airflow standalone exited before {what}:\n{log_tail(log)}")
        time.sleep(0.5)  # poll interval only: the state decides, not the clock
    raise AssertionError(f"no {what} within the {HANG_GUARD:.0f} s hang guard:\n{log_tail(log)}")


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:]


@pytest.mark.airflow
@pytest.mark.slow
def test_an_object_put_in_the_bucket_starts_the_dag_run_under_airflow_standalone(
    s3_env: S3Env, tmp_path: Path
) -> None:
    from driftloop.serving.client import free_port

    queue = to_sqs(s3_env)
    s3_env.client("sqs").purge_queue(QueueUrl=queue)  # S3's s3:TestEvent would start a run
    project = tmp_path / "synth"
    spec = SPEC.replace("data/raw/s/*.csv", s3_env.url("raw/s/*.csv")).replace(
        "ingest: {settle_seconds: 0}",
        f"ingest: {{settle_seconds: 0, events: {{queue: '{queue}', wait_seconds: 1}}}}",
    )
    write_spec(project, spec)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    aws = s3_env.server.env()
    connection = {
        "conn_type": "aws",
        "login": aws["AWS_ACCESS_KEY_ID"],
        "password": aws["AWS_SECRET_ACCESS_KEY"],
        "extra": {"endpoint_url": s3_env.endpoint, "region_name": aws["AWS_DEFAULT_REGION"]},
    }
    home = make_home(
        tmp_path,
        {
            **aws,  # the tasks' driftloop reads the bucket with these
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        },
    )
    export_into(project, home)
    scratch = tmp_path / "scratch"
    land(scratch, "week-1.csv", 400, seed=1)
    log = tmp_path / "standalone.log"
    process = home.start("standalone", log=log)
    try:
        token = until("the API server answering", lambda: token_of(base), process, log)
        dag = "/api/v2/dags/driftloop_synth"

        def runs() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = api_get(base, token, f"{dag}/dagRuns")["dag_runs"]
            return found

        def watching() -> bool:  # the DAG is parsed and its asset's watcher is registered
            api_get(base, token, dag)  # 404 until the DAG is parsed: asked again
            assets = api_get(base, token, "/api/v2/assets")["assets"]
            return any(a["name"] == "driftloop_synth_raw" and a.get("watchers") for a in assets)

        until("the DAG and its watcher", watching, process, log)
        assert until("the DAG's runs", lambda: [runs()], process, log) == [[]]  # none yet
        s3_env.put("raw/s/week-1.csv", (scratch / "data" / "raw" / "s" / "week-1.csv").read_bytes())

        def finished() -> dict[str, Any] | None:
            done = [r for r in runs() if r["state"] in ("success", "failed")]
            return done[0] if done else None

        run = until("a finished DAG run", finished, process, log)
        assert run["state"] == "success", log_tail(log)
        assert run["run_type"] == "asset_triggered"
    finally:
        stop_group(process)
    kinds = [e["type"] for e in events_of(project)]
    assert "DataArrived" in kinds and "ModelPromoted" in kinds
