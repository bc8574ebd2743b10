"""The container image and the compose file.

Fast (in ``make test``): hadolint on the Dockerfile, the Dockerfile's shape (a build stage,
a runtime stage on the same ``BASE`` holding only the venv, a non-root user, driftloop as
the entry point), the build context, and the compose file against the compose-spec schema,
its commands against driftloop's CLI and MLflow's, and its secrets (none written in it).

Slow (``make test-image``, marker ``image``, root with buildah and debootstrap): the image
built for real on a Debian base made here, then every role run inside it on a small
project: a single ``driftloop stage``, ``driftloop watch`` training and promoting, ``driftloop
serve`` answering a prediction, the Dask and Prefect entry points.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
import yaml

from tests.fixtures.buildah import RUN_GUARD_SECONDS, BuiltImage, stop_group
from tests.fixtures.moto import MotoServer
from tests.serving_helpers import record
from tests.test_lifecycle import SPEC, land

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose.yaml"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
IMAGE_UID = 10001  # the Dockerfile's user
LINT_GUARD_SECONDS = 120.0


def _tool(name: str) -> str:
    """A dev-extra tool from this interpreter's environment (its absence is a broken install)."""
    found = Path(sys.executable).parent / name
    if found.is_file():
        return str(found)
    on_path = shutil.which(name)
    assert on_path, f"{name} is not installed: pip install -e '.[dev]' (it is in the dev extra)"
    return on_path


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments out."""
    joined = re.sub(
        r"\\\n\s*",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


# -- the Dockerfile ------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=LINT_GUARD_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"hadolint on Dockerfile:\n{done.stdout}{done.stderr}"


def test_dockerfile_builds_on_base_and_runs_driftloop_as_a_user() -> None:
    steps = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE="), "ARG BASE comes first"
    stages = [args for word, args in steps if word == "FROM"]
    assert stages == ["${BASE} AS build", "${BASE} AS runtime"], stages
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    copies = [args for word, args in runtime if word == "COPY"]
    assert copies == ["--from=build /opt/driftloop /opt/driftloop"], (
        f"the runtime stage copies the venv only, got {copies}"
    )
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0"), f"the image runs as a user, got {users}"
    assert ("ENTRYPOINT", '["driftloop"]') in runtime
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert re.search(r"\bOMP_NUM_THREADS=\d+", env), "OMP_NUM_THREADS is set deliberately"
    assert any(word == "HEALTHCHECK" for word, _ in runtime)


def test_dockerfile_extras_exist_in_pyproject() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    steps = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    [default] = [args.split("=", 1)[1] for word, args in steps if args.startswith("EXTRAS=")]
    wanted = default.split(",")
    assert {"s3", "postgres", "prefect"} <= set(wanted), wanted  # every role: S3, PG, Dask
    compose = _compose()
    for service in ("mlflow",):
        wanted += compose["services"][service]["build"]["args"]["EXTRAS"].split(",")
    assert set(wanted) <= set(extras), f"{set(wanted) - set(extras)} not in pyproject's extras"


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore starts by leaving everything out"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    steps = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    copied = set()
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            copied |= {source.rstrip("/") for source in args.split()[:-1]}
    assert copied == kept, f"COPY takes {sorted(copied)}, .dockerignore keeps {sorted(kept)}"


# -- the compose file -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    done = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=LINT_GUARD_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"{COMPOSE.name} against the compose spec:\n{done.stdout}"


def test_compose_runs_every_role() -> None:
    services = _compose()["services"]
    wanted = {"postgres", "s3", "mlflow", "serve", "watch", "prefect-server", "prefect-flows"}
    wanted |= {"dask-scheduler", "dask-worker"}
    assert wanted <= set(services), f"missing: {sorted(wanted - set(services))}"


def _driftloop_commands() -> list[tuple[str, list[str]]]:
    """(service, argv after 'driftloop') for every service that runs driftloop."""
    found = []
    for name, service in _compose()["services"].items():
        entry = service.get("entrypoint")
        command = service.get("command")
        if service.get("image") != "driftloop:local" or command is None:
            continue
        if entry is None:
            found.append((name, [str(part) for part in command]))
        elif entry[:1] == ["/bin/sh"]:
            script = " ".join(command)
            for call in re.findall(r"driftloop ([^;&|]+)", script):
                found.append((name, shlex.split(call)))
    return found


def test_compose_driftloop_commands_parse() -> None:
    """Each service's command is a real driftloop command with real options."""
    import typer
    from typer.core import TyperGroup

    from driftloop.cli import app

    commands = _driftloop_commands()
    assert {name for name, _ in commands} >= {"serve", "watch", "prefect-flows", "prefect-ingest"}
    root = typer.main.get_command(app)
    for service, argv in commands:
        command: Any = root
        ctx = command.make_context("driftloop", list(argv))
        while isinstance(command, TyperGroup):
            rest = [*ctx._protected_args, *ctx.args]
            name, found, rest = command.resolve_command(ctx, rest)
            assert found is not None, f"service {service}: no driftloop command {argv}"
            command = found
            ctx = command.make_context(str(name), rest, parent=ctx)
        assert "project" in ctx.params, service
        assert str(ctx.params["project"]) == "/project", f"service {service}: {argv}"


def test_compose_mlflow_command_parses_as_mlflow_server() -> None:
    """The mlflow service's command, parsed by the installed MLflow's own ``server`` command
    (in process: the module is shared with the other tests that import MLflow)."""
    from tests.fixtures.mlflow_server import mlflow_command

    if mlflow_command() is None:
        pytest.fail("mlflow server is not installed: pip install -e '.[dev]'")
    from mlflow.cli import server

    service = _compose()["services"]["mlflow"]
    assert service["entrypoint"] == ["mlflow"] and service["command"][0] == "server"
    ctx = server.make_context("server", [str(part) for part in service["command"][1:]])
    # what the tests' server runs with (tests/fixtures/mlflow_server.py)
    assert ctx.params["backend_store_uri"].startswith("postgresql+psycopg://")
    assert ctx.params["artifacts_destination"].startswith("s3://")
    assert ctx.params["serve_artifacts"] is True
    assert ctx.params["workers"] in (1, "1")
    assert service["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_compose_s3_setup_makes_buckets_and_notifications(moto_server: MotoServer) -> None:
    """The s3-setup service's script, run as the service runs it (its environment from the
    compose file, the endpoint the moto server's): the buckets exist, an object landing
    under raw/ arrives on the queue, and a second run changes nothing and succeeds."""
    service = _compose()["services"]["s3-setup"]
    assert service["entrypoint"] == ["python", "/setup/s3_setup.py"]
    assert service["volumes"] == ["./s3_setup.py:/setup/s3_setup.py:ro"]
    names = {
        key: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))  # the defaults
        for key, value in service["environment"].items()
        if key.startswith(("DRIFTLOOP_", "MLFLOW_"))
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(moto_server.env())
    env.update(names)
    script = COMPOSE.parent / "s3_setup.py"
    for _ in range(2):  # again: idempotent
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=LINT_GUARD_SECONDS,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    s3, sqs = moto_server.client("s3"), moto_server.client("sqs")
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    raw = names["DRIFTLOOP_RAW_BUCKET"]
    assert {raw, names["DRIFTLOOP_OUTPUTS_BUCKET"], names["MLFLOW_ARTIFACTS_BUCKET"]} <= buckets
    url = sqs.get_queue_url(QueueName=names["DRIFTLOOP_EVENTS_QUEUE"])["QueueUrl"]
    s3.put_object(Bucket=raw, Key="raw/orders/orders-0001.csv", Body=b"a,b\n1,2\n")
    s3.put_object(Bucket=raw, Key="elsewhere/x.csv", Body=b"a\n1\n")  # not under raw/
    keys: list[str] = []
    deadline = time.monotonic() + LINT_GUARD_SECONDS  # a hang guard; messages are awaited
    while time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=10)
        for message in got.get("Messages", []):
            body = json.loads(message["Body"])  # s3:TestEvent has no Records
            keys += [unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if "raw/orders/orders-0001.csv" in keys:
            break
    assert keys == ["raw/orders/orders-0001.csv"], keys


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)


def _environments(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["environment"]] if isinstance(node.get("environment"), dict) else []
        for value in node.values():
            found += _environments(value)
        return found
    if isinstance(node, list):
        return [env for item in node for env in _environments(item)]
    return []


def test_compose_holds_no_secret() -> None:
    """Every secret is a required variable (${VAR:?...}); the example env file names each."""
    lines = COMPOSE.read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", text))
    environments = _environments(_compose())
    assert environments
    for environment in environments:
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]*\}", str(value)), (
                    f"{COMPOSE.name}: {key} must come from a required variable, got {value!r}"
                )
    # a password inside a URL too (Prefect's database URL) comes from a variable
    for url in re.findall(r"\w+://[^\s\"']+", text):
        userinfo = url.split("://", 1)[1].split("@", 1)
        if len(userinfo) == 2 and ":" in userinfo[0]:
            assert userinfo[0].split(":", 1)[1].startswith("${"), f"a password in {url}"
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required <= example, f"{ENV_EXAMPLE.name} lacks {sorted(required - example)}"


# -- the image, built and run ---------------------------------------------------------------


def _ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.image
def test_image_runs_every_role(driftloop_image: BuiltImage, tmp_path: Path) -> None:
    image = driftloop_image
    buildah = image.buildah
    print(f"base {image.seconds_base:.0f} s, image {image.seconds_build:.0f} s")
    container = buildah.from_image(image.tag)

    helped = _ok(buildah.run(container, ["driftloop", "--help"]), "driftloop --help")
    assert "serve" in helped and "watch" in helped and "stage" in helped
    assert _ok(buildah.run(container, ["id", "-u"]), "id -u").strip() == str(IMAGE_UID)
    for role in (["dask", "worker", "--help"], ["dask", "scheduler", "--help"]):
        assert "Usage" in _ok(buildah.run(container, role), " ".join(role))
    _ok(
        buildah.run(container, ["python", "-c", "import prefect, psycopg, boto3, s3fs"]),
        "the extras' imports",
    )

    # a small project, made here and mounted: the image's user owns it
    project = tmp_path / "project"
    project.mkdir()
    (project / "driftloop.yaml").write_text(SPEC + "serving: {workers: 1}\n", encoding="utf-8")
    land(project, "part-0.csv", 400, seed=1)
    for path in [project, *project.rglob("*")]:
        os.chown(path, IMAGE_UID, IMAGE_UID)
    mount = [f"{project}:/project"]

    ingested = _ok(
        buildah.run(container, ["driftloop", "stage", "ingest", "-p", "/project"], volumes=mount),
        "driftloop stage ingest",
    )
    assert "batch" in ingested, ingested
    watched = _ok(
        buildah.run(
            container, ["driftloop", "watch", "--until-idle", "-p", "/project"], volumes=mount
        ),
        "driftloop watch --until-idle",
    )
    assert "PROMOTED" in watched, watched

    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            buildah.run_command(
                container,
                ["driftloop", "serve", "-p", "/project", "--port", str(port)],
                volumes=mount,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: buildah and the server stop together
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(server, url, log)
        answer = httpx.post(f"{url}/predict", json=record(), timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == {"name": "synth", "version": "1"}, body
        [prediction] = body["predictions"]
        assert prediction["prediction"] in ("no", "yes")
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-6
        # the image's HEALTHCHECK command, run in the container against this server
        health = buildah.run(
            container,
            ["python", "-c", _healthcheck_code()],
            env=[f"DRIFTLOOP_HEALTH_URL={url}/health"],
        )
        _ok(health, "the HEALTHCHECK command")
    finally:
        stop_group(server)


def _healthcheck_code() -> str:
    steps = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    [check] = [args for word, args in steps if word == "HEALTHCHECK"]
    argv = json.loads(check.split("CMD", 1)[1])  # the exec form is a JSON list
    assert argv[:2] == ["python", "-c"], argv
    return str(argv[2])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until /ready answers 200 (the model loaded); the guard only stops a hang."""
    deadline = time.monotonic() + RUN_GUARD_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve in the container exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # poll interval only
    raise AssertionError(f"serve in the container not ready:\n{log.read_text()[-3000:]}")
