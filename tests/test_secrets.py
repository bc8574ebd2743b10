"""No credential leaves driftloop (issue 12, section 2): a secret planted in the MLflow
tracking URI, with a registry that does not answer, is swept for on every output surface:
``driftloop run``'s output, the state database, ``status --json``, ``driftloop models``
errors (with and without a traceback), and ``/ready``, ``/model`` and ``/predict`` answers
(and the server's log)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from driftloop.core.layout import Layout
from driftloop.core.redact import Redacting, has_password, redact, redact_value
from driftloop.serving.client import background_server, free_port

from .helpers import write_spec
from .serving_helpers import SERVING, record
from .test_lifecycle import SPEC, land

# the tests share the module's project, where the run leaves what the server then reads
pytestmark = pytest.mark.xdist_group("secrets")

SECRET = "s3cr3t-Pa55word"
HANG_GUARD = 300.0


# ---- redaction, as a unit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "API request to http://user:s3cr3t@127.0.0.1:9/api/2.0 failed",
            "API request to http://user:***@127.0.0.1:9/api/2.0 failed",
        ),
        ("postgresql+psycopg://app:p@ss:w0rd@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        (
            "'https://u:pw@host' and 'https://v:pw2@other/path'",
            "'https://u:***@host' and 'https://v:***@other/path'",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA1&X-Amz-Signature=abc&x=1",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1",
        ),
        ("host=db user=app password=hunter2 dbname=x", "host=db user=app password=*** dbname=x"),
        ("http://127.0.0.1:5000/api and a@b.c", "http://127.0.0.1:5000/api and a@b.c"),
        ("postgresql://driftloop@db:5432/x", "postgresql://driftloop@db:5432/x"),
        ("column 'x' breaks x >= 0: got '-5'", "column 'x' breaks x >= 0: got '-5'"),
    ],
)
def test_redact_masks_credentials_and_nothing_else(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert has_password(text) == (text != shown)


def test_redacting_values_and_streams(tmp_path: Path) -> None:
    value = {"a": ["http://u:pw@h", 1], "b": {"c": "x=1"}}
    assert redact_value(value) == {"a": ["http://u:***@h", 1], "b": {"c": "x=1"}}
    with (tmp_path / "out").open("w") as raw:
        stream = Redacting(raw)
        assert stream.write("see http://u:pw@h\n") == len("see http://u:pw@h\n")
        stream.writelines(["postgresql://a:b@c\n"])
        stream.flush()
    assert (tmp_path / "out").read_text() == "see http://u:***@h\npostgresql://a:***@c\n"


# ---- every surface, with a registry that does not answer ----------------------------------


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens there
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_API_TOKENS")}
    return {
        **keep,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # fail at once rather than back off for minutes
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    project = tmp_path_factory.mktemp("secrets")
    write_spec(project, SPEC + SERVING + "  first_model_wait_seconds: 0\n")
    land(project, "part-0.csv", 400, seed=1)
    return project


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        env=env,
    )


def clean(text: str) -> str:
    """Fails the test when ``text`` holds the secret; the text otherwise."""
    assert SECRET not in text, text[text.index(SECRET) - 300 :][:600]
    return text


def test_run_status_and_models_never_show_the_password(project: Path, env: dict[str, str]) -> None:
    run = cli(env, "run", "-p", str(project))
    out = clean(run.stdout + run.stderr)
    assert run.returncode != 0  # training could not reach the registry
    assert "user:***@127.0.0.1" in out  # the surface did carry the URI, masked
    for args in (["status", "--json"], ["status"], ["models"], ["-v", "models"], ["-v", "run"]):
        done = cli(env, *args, "-p", str(project))
        clean(done.stdout + done.stderr)
    models = cli(env, "models", "-p", str(project))
    assert models.returncode != 0 and "user:***@" in models.stdout + models.stderr
    with sqlite3.connect(Layout(project).state_db) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump = "\n".join(str(row) for t in tables for row in db.execute(f"SELECT * FROM {t}"))
    assert "user:***@" in clean(dump)  # the failed stage run and its event, masked


@pytest.fixture(scope="module")
def server(project: Path, env: dict[str, str]) -> Iterator[str]:
    log = project / "serve.log"
    with background_server(project, log=log, env=env, wait_ready=False) as running:
        yield running.url
    clean(log.read_text(errors="replace"))


def test_the_api_never_shows_the_password(server: str) -> None:
    deadline = time.monotonic() + HANG_GUARD  # a hang guard: wait for the registry's error
    while True:
        try:
            ready = httpx.get(f"{server}/ready", timeout=30)
            if "did not answer" in ready.text:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never reported the registry"
        time.sleep(0.2)
    assert ready.status_code == 503 and "user:***@" in clean(ready.text)
    info = httpx.get(f"{server}/model", timeout=30)
    assert info.status_code == 503 and "user:***@" in clean(info.text)
    predicted = httpx.post(f"{server}/predict", json=record(), timeout=30)
    assert predicted.status_code == 503 and "user:***@" in clean(predicted.text)
