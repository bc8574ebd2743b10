"""A shared registry and state: ``mlflow server`` on PostgreSQL with proxied S3 artifacts
(tests/fixtures/mlflow_server.py), and the state database on the same PostgreSQL server.

Three project folders with one ``driftloop.yaml`` stand for three machines: the trainer (the
raw data, ``driftloop run``), an operator's (``driftloop models promote`` / ``rollback``)
and the server's (``driftloop serve``, no data, an empty model cache). None of them holds AWS
credentials: models go up and come down through the tracking server. The server follows the
champion through the registry and the shared state alone, with zero failed requests, and no
password or secret shows anywhere driftloop writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.models.registry import CHAMPION, open_registry
from driftloop.serving.client import Traffic, background_server
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.moto import SECRET_KEY
from tests.fixtures.postgres import PASSWORD

from .helpers import write_spec
from .serving_helpers import record
from .test_lifecycle import SPEC, land

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "driftloop.cli"]
HANG_GUARD = 600.0  # seconds: a stuck process fails the test, a slow one does not
SERVING = """
serving:
  workers: 1
  poll_seconds: 2
  events_poll_seconds: 0.1
  log: {flush_seconds: 0.3}
"""


def shared_spec(server: MlflowServer, postgres_url: str) -> str:
    """The one spec every machine reads: the registry's URI and the state database's URL
    (without its password: libpq reads PGPASSWORD)."""
    url = sa.make_url(postgres_url)
    state = f"postgresql://postgres@127.0.0.1:{url.port}/{url.database}"
    # the session's server is shared between tests: a model name of this test's own
    name = f"shared-{uuid.uuid4().hex[:8]}"
    return (
        SPEC.replace("name: synth", f"name: {name}")
        + SERVING
        + f"model: {{tracking_uri: '{server.uri}'}}\n"
        + f"state: {{url: '{state}'}}\n"
    )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=HANG_GUARD
    )


def served(project: Path, postgres_url: str) -> list[dict[str, Any]]:
    with StateDB(Layout(project).state_db, url=postgres_url) as db:
        return [e for e in db.events(limit=10_000) if e["type"] == "ModelServed"]


def wait_served(project: Path, postgres_url: str, version: str) -> None:
    """Wait for the event that says the server serves ``version`` (a hang guard only)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        events = served(project, postgres_url)
        if events and events[-1]["version"] == version:
            return
        assert time.monotonic() < deadline, f"the server never served v{version}: {events}"
        time.sleep(0.1)


def texts_under(folder: Path) -> str:
    out = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in (".parquet", ".skops", ".db"):
            out.append(path.read_text(errors="replace"))
    return "\n".join(out)


def test_train_promote_roll_back_and_serve_from_three_machines(
    mlflow_server: MlflowServer, postgres_url: str, no_aws: None, tmp_path: Path
) -> None:
    spec = shared_spec(mlflow_server, postgres_url)
    trainer, operator, server = tmp_path / "trainer", tmp_path / "operator", tmp_path / "server"
    for folder in (trainer, operator, server):
        write_spec(folder, spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"OMP_NUM_THREADS": "1", "PGPASSWORD": PASSWORD}
    outputs: list[str] = []

    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = cli(env, *args)
        outputs.append(done.stdout + done.stderr)
        return done

    # The first model: trained, registered on the server, promoted by the gate.
    land(trainer, "part-0.csv", 800, seed=1)
    first = run_cli("run", "-p", str(trainer))
    assert first.returncode == 0, first.stdout + first.stderr
    registry = open_registry(load_spec(trainer), Layout(trainer))
    assert registry.alias(CHAMPION) == "1"

    with background_server(
        server, log=tmp_path / "serve.log", env=env, timeout=HANG_GUARD
    ) as running:
        with running.client() as c:
            assert c.get("/ready").json()["model"]["version"] == "1"
        # downloaded through the tracking server into the server's own cache
        assert list(Layout(server).model_cache.glob("*/1-*/driftloop"))
        traffic = Traffic(running.url, [record()], concurrency=3)
        traffic.start()
        try:
            # A second model: trained and decided by the gate; promoted by hand if it lost.
            land(trainer, "part-1.csv", 800, seed=2, start_day=3)
            second = run_cli("run", "-p", str(trainer))
            assert second.returncode == 0, second.stdout + second.stderr
            assert registry.get_version("2") is not None
            if registry.alias(CHAMPION) != "2":
                promoted = run_cli("models", "-p", str(operator), "promote", "2")
                assert promoted.returncode == 0, promoted.stdout + promoted.stderr
            assert registry.alias(CHAMPION) == "2"
            wait_served(server, postgres_url, "2")
            # The operator rolls back from a machine of their own: the alias moves back.
            back = run_cli("models", "-p", str(operator), "rollback", "--reason", "e2e")
            assert back.returncode == 0, back.stdout + back.stderr
            assert registry.alias(CHAMPION) == "1"
            wait_served(server, postgres_url, "1")
        finally:
            traffic.stop()
        with running.client() as c:
            assert c.post("/predict", json=record()).json()["model"]["version"] == "1"

    answers = traffic.answers
    assert len(answers) > 20
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:5]
    assert {a.version for a in answers} == {"1", "2"}  # both served while the load ran

    listing = run_cli("models", "-p", str(operator), "--json")
    assert listing.returncode == 0, listing.stderr
    assert "1" in listing.stdout and "rollback" in listing.stdout.lower()

    # No password, no secret: in what the commands printed, in the server's log, in every
    # file the three folders hold, in the events and runs of the state database.
    with StateDB(Layout(trainer).state_db, url=postgres_url) as db:
        events = db.events(limit=10_000)
    assert {"ModelRegistered", "ModelPromoted", "ModelServed"} <= {e["type"] for e in events}
    shown = "\n".join(outputs) + json.dumps(events, default=str)
    shown += (tmp_path / "serve.log").read_text(errors="replace")
    shown += "".join(texts_under(folder) for folder in (trainer, operator, server))
    for secret in (PASSWORD, SECRET_KEY):
        assert secret not in shown


def test_a_served_version_comes_from_the_server_not_a_shared_folder(
    mlflow_server: MlflowServer, postgres_url: str, no_aws: None, tmp_path: Path
) -> None:
    """The server's machine has none of the trainer's files: its model cache is filled from
    the tracking server's proxied artifacts, and answers match the trainer's own copy."""
    spec = shared_spec(mlflow_server, postgres_url)
    trainer, server = tmp_path / "trainer", tmp_path / "server"
    write_spec(trainer, spec)
    write_spec(server, spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"OMP_NUM_THREADS": "1", "PGPASSWORD": PASSWORD}
    land(trainer, "part-0.csv", 800, seed=1)
    done = cli(env, "run", "-p", str(trainer))
    assert done.returncode == 0, done.stdout + done.stderr
    here = sorted(Layout(trainer).model_cache.glob("*/1-*/driftloop/*"))
    log = tmp_path / "serve.log"
    with background_server(server, log=log, env=env, timeout=HANG_GUARD) as r, r.client() as c:
        answer = c.post("/predict", json=record())
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
    there = sorted(Layout(server).model_cache.glob("*/1-*/driftloop/*"))
    assert [p.name for p in there] == [p.name for p in here]
    assert [p.read_bytes() for p in there if p.is_file()] == [
        p.read_bytes() for p in here if p.is_file()
    ]
    # the server's folder holds its own prediction log, and no data or store of the trainer's
    assert not any((server / "data" / d).exists() for d in ("raw", "processed", "features"))
    assert not (server / "mlartifacts").exists() and not (server / "mlflow.db").exists()
    assert httpx.get(f"{mlflow_server.uri}/health").status_code == 200


# -- bad input ------------------------------------------------------------------------------

REGISTRY_SECRET = "reg-Secret-91"  # a password in the tracking URI: it must never show


def failing_run(project: Path, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """``driftloop run`` that fails at train: its output, and the train's recorded run."""
    done = cli(env, "run", "-p", str(project))
    assert done.returncode == 1, done.stdout + done.stderr
    with StateDB(Layout(project).state_db) as db:
        [train] = [r for r in db.stage_runs() if r["stage"] == "train"]
    return done.stdout + done.stderr, train


def test_a_tracking_server_that_does_not_answer_is_named_and_retried(tmp_path: Path) -> None:
    from driftloop.serving.client import free_port

    port = free_port()  # nothing listens there
    uri = f"http://driftloop:{REGISTRY_SECRET}@127.0.0.1:{port}"
    project = write_spec(tmp_path / "p", SPEC + f"model: {{tracking_uri: '{uri}'}}\n").parent
    land(project, "part-0.csv", 800, seed=1)
    # MLflow's own retries (7, with a backoff: minutes) are the user's to tune; off here
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out, train = failing_run(project, env)
    assert f"the model registry at http://driftloop:***@127.0.0.1:{port} did not answer" in out
    assert "check that the tracking server runs" in out and "model.tracking_uri" in out
    assert "unexpected" not in out  # a known condition, said as such
    assert train["status"] == "error"  # transient: tried again, not a failure of the data
    again, retried = failing_run(project, env)
    assert "FAILED train" in again and retried["attempts"] == train["attempts"] + 1
    with StateDB(Layout(project).state_db) as db:
        stored = json.dumps([db.stage_runs(), db.events(limit=1000)], default=str)
    assert f"127.0.0.1:{port}" in stored  # the error is kept, with the URI ...
    for text in (out, again, stored):
        assert REGISTRY_SECRET not in text  # ... and never its password


def test_a_server_whose_artifact_store_is_gone_is_named_and_retried(
    postgres_server: Any, moto_server: Any, no_aws: None, tmp_path: Path
) -> None:
    from tests.fixtures.mlflow_server import mlflow_command, start_mlflow_server

    if mlflow_command() is None:
        pytest.skip("mlflow server is not installed (only mlflow-skinny is)")
    broken = start_mlflow_server(postgres_server, moto_server, artifacts_bucket="no-such-bucket")
    try:
        project = write_spec(
            tmp_path / "p", SPEC + f"model: {{tracking_uri: '{broken.uri}'}}\n"
        ).parent
        land(project, "part-0.csv", 800, seed=1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {"OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        out, train = failing_run(project, env)
    finally:
        broken.stop()
        import shutil

        shutil.rmtree(broken.root, ignore_errors=True)
    assert f"the model registry at {broken.uri} answers, but its artifact store did not" in out
    assert "--artifacts-destination" in out and "bucket exists" in out
    assert train["status"] == "error"  # transient: tried again
    assert SECRET_KEY not in out and PASSWORD not in out
