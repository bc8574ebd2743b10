"""The registry contract: the same checks over every implementation in ``registry.KINDS``
(MLflow on a temporary SQLite store, and the in-memory one), so a new implementation is
tested the moment it is registered; then what is particular to each."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from driftloop.core.errors import RegistryError, RegistryUnavailableError
from driftloop.core.layout import Layout
from driftloop.core.spec import parse_spec, read_yaml
from driftloop.models import cache as model_cache
from driftloop.models.package import META
from driftloop.models.registry import (
    CHALLENGER,
    CHAMPION,
    KINDS,
    Registry,
    kind_of,
    open_registry,
    version_info,
)
from driftloop.testing import InMemoryRegistry, forget, memory_store
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.moto import MotoServer

SPEC = """
name: contract
task: classification
target: y
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    x: {dtype: float}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
"""


# A store of each kind in a test's folder, and the shared one (`mlflow server` on PostgreSQL
# with proxied S3 artifacts, tests/fixtures/mlflow_server.py). A kind added to
# registry.KINDS without an entry here fails test_every_kind_has_a_store: add how to make
# one of its stores.
def _server_store(request: pytest.FixtureRequest, folder: Path) -> str:
    request.getfixturevalue("no_aws")  # the client holds no S3 credentials: proxied artifacts
    server = request.getfixturevalue("mlflow_server")
    return str(server.uri)


STORES: dict[str, tuple[str, Callable[[pytest.FixtureRequest, Path], str]]] = {
    "mlflow": ("mlflow", lambda request, folder: f"sqlite:///{folder / 'mlflow.db'}"),
    "mlflow-server": ("mlflow", _server_store),
    "memory": ("memory", lambda request, folder: memory_store("contract").uri),
}


def test_every_kind_has_a_store() -> None:
    assert set(KINDS) <= {kind for kind, _ in STORES.values()}


@pytest.fixture(params=sorted(STORES))
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    kind, make = STORES[request.param]
    uri = make(request, tmp_path)
    # A shared server outlives the test: each test registers a model of its own there.
    name = f"contract-{uuid.uuid4().hex[:8]}" if request.param == "mlflow-server" else "contract"
    spec = parse_spec(
        read_yaml(
            SPEC.replace("name: contract", f"name: {name}") + f"model: {{tracking_uri: '{uri}'}}\n"
        )
    )
    opened = open_registry(spec, Layout(tmp_path))
    assert kind_of(opened.uri) == kind and opened.model == name
    yield opened
    forget(uri)


def package(folder: Path, marker: str) -> Path:
    """A small package folder: the metadata MLflow's signature is read from, and files."""
    import json

    folder.mkdir(parents=True)
    meta = {"spec": read_yaml(SPEC), "marker": marker}
    (folder / META).write_text(json.dumps(meta), encoding="utf-8")
    (folder / "pipeline.skops").write_bytes(bytes(range(256)) * 4)
    (folder / "user_code").mkdir()
    (folder / "user_code" / "feats.py").write_text(f"# {marker}\n", encoding="utf-8")
    return folder


def register(registry: Registry, folder: Path, n: int) -> str:
    done = registry.register(
        package(folder / f"p{n}", f"v{n}"),
        params={"seed": n, "long": "x" * 600},
        metrics={"holdout_roc_auc": 0.5 + n / 10, "baseline_roc_auc": 0.5},
        tags={"driftloop.train_key": f"key{n}"},
        lineage={"batches": [{"batch_id": f"b{n}"}]},
        spec_text=SPEC,
    )
    assert done.run_id
    return done.version


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_an_empty_registry_has_nothing_and_refuses_unknown_versions(
    registry: Registry, tmp_path: Path
) -> None:
    assert registry.alias(CHAMPION) is None
    assert registry.versions() == []
    assert registry.get_version("1") is None
    for attempt in (
        lambda: registry.set_alias(CHAMPION, "1"),
        lambda: registry.tag("1", {"a": "b"}),
        lambda: registry.download("1", tmp_path / "dl"),
    ):
        with pytest.raises(RegistryError, match=f"'{registry.model}' has no version 1"):
            attempt()


def test_versions_are_registered_listed_tagged_and_aliased(
    registry: Registry, tmp_path: Path
) -> None:
    assert register(registry, tmp_path, 1) == "1"
    assert registry.alias(CHALLENGER) == "1"  # a new version is the challenger
    assert register(registry, tmp_path, 2) == "2"
    assert registry.alias(CHALLENGER) == "2"
    assert registry.alias(CHAMPION) is None

    registry.set_alias(CHAMPION, "1")
    assert registry.alias(CHAMPION) == "1"
    registry.tag("1", {"driftloop.decision": "promoted"})
    listed = registry.versions()
    assert [v.version for v in listed] == ["2", "1"]  # newest first
    second, first = listed
    assert (second.aliases, first.aliases) == ([CHALLENGER], [CHAMPION])
    assert first.tags == {"driftloop.train_key": "key1", "driftloop.decision": "promoted"}
    assert second.tags == {"driftloop.train_key": "key2"}
    assert first.metrics == {"holdout_roc_auc": 0.6, "baseline_roc_auc": 0.5}
    assert first.run_id and second.run_id and first.run_id != second.run_id
    assert first.created is not None
    assert registry.get_version("1") == first
    assert registry.get_version("3") is None
    with pytest.raises(RegistryError, match="has no version 3"):
        registry.set_alias(CHAMPION, "3")
    assert registry.alias(CHAMPION) == "1"  # unchanged

    registry.set_alias(CHAMPION, "2")  # aliases move
    assert [v.aliases for v in registry.versions()] == [[CHALLENGER, CHAMPION], []]


def test_a_version_gives_back_its_package_and_lineage(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, 1)
    register(registry, tmp_path, 2)
    got = registry.download("1", tmp_path / "download")
    assert got.is_dir() and got.is_relative_to(tmp_path / "download")
    assert files(got) == files(tmp_path / "p1")
    assert registry.lineage("2") == {"batches": [{"batch_id": "b2"}]}
    info = version_info(registry, "2")
    assert info["metrics"] == {"baseline_roc_auc": 0.5, "holdout_roc_auc": 0.7}
    assert info["lineage"] == {"batches": [{"batch_id": "b2"}]}
    # the machine's cache: filled from the registry once, keyed by the store
    layout = Layout(tmp_path / "project")
    entry = model_cache.fetch(registry, layout, "2")
    assert files(entry / model_cache.PACKAGE) == files(tmp_path / "p2")
    run_id = registry.versions()[0].run_id
    assert run_id is not None
    assert model_cache.lookup(layout, registry.model, registry.uri, "2", run_id) == entry
    assert model_cache.read_info(entry)["run_id"] == run_id
    assert model_cache.lookup(layout, registry.model, registry.uri, "2", "another-run") is None


# -- MLflow ---------------------------------------------------------------------------------


def mlflow_registry(tmp_path: Path, extra: str = "") -> Registry:
    return open_registry(parse_spec(read_yaml(SPEC + extra)), Layout(tmp_path))


def test_mlflow_reads_of_a_store_never_written_create_nothing(tmp_path: Path) -> None:
    registry = mlflow_registry(tmp_path)
    assert registry.uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert registry.alias(CHAMPION) is None and registry.versions() == []
    with pytest.raises(RegistryError):
        registry.set_alias(CHAMPION, "1")
    assert not (tmp_path / "mlflow.db").exists()


def test_mlflow_leaves_the_environment_as_the_user_set_it(tmp_path: Path) -> None:
    """MLflow writes the store it is pointed at into MLFLOW_TRACKING_URI for child processes;
    driftloop puts the user's setting back, so a child never inherits one project's store."""
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    first = mlflow_registry(tmp_path / "a")
    register(first, tmp_path, 1)
    second = mlflow_registry(tmp_path / "b")
    register(second, tmp_path / "b", 1)
    assert first.alias(CHALLENGER) == second.alias(CHALLENGER) == "1"
    assert {k: os.environ.get(k) for k in before} == before
    # A child of this process opens the store its own project names.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from driftloop.core.layout import Layout\n"
        "from driftloop.core.spec import parse_spec, read_yaml\n"
        "from driftloop.models.registry import open_registry\n"
        "spec = parse_spec(read_yaml(sys.argv[1]))\n"
        "print(open_registry(spec, Layout(Path(sys.argv[2]))).uri)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, SPEC, str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = before["MLFLOW_TRACKING_URI"] or second.uri
    assert child.stdout.strip() == expected


def test_mlflow_that_does_not_answer_is_a_transient_error(tmp_path: Path) -> None:
    registry = mlflow_registry(tmp_path, "model: {tracking_uri: 'http://127.0.0.1:9'}\n")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    try:
        with pytest.raises(RegistryUnavailableError, match="did not answer"):
            registry.alias(CHAMPION)
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        del os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]


def test_mlflow_ignores_and_keeps_the_process_wide_mlflow_setting(tmp_path: Path) -> None:
    """A notebook that points MLflow's fluent API elsewhere between two registrations: the
    registry still writes to its own store, and leaves the notebook's setting as it was."""
    import mlflow

    first = mlflow_registry(tmp_path / "a")
    register(first, tmp_path / "a", 1)
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    try:
        assert register(first, tmp_path / "a", 2) == "2"
        assert mlflow.get_tracking_uri() == elsewhere
        assert [v.version for v in first.versions()] == ["2", "1"]
        got = first.download("1", tmp_path / "dl")  # read from its store, not the notebook's
        assert files(got) == files(tmp_path / "a" / "p1")
        assert first.lineage("2") == {"batches": [{"batch_id": "b2"}]}
        assert not (tmp_path / "elsewhere.db").exists()  # nothing was written there
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_mlflow_server_keeps_models_in_s3_through_its_proxy(
    mlflow_server: MlflowServer,
    moto_server: MotoServer,
    no_aws: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The shared store: the client has no AWS credentials, the server's bucket gets the
    package, and a second machine (another project folder) gets it back through the server."""
    import boto3.session

    assert boto3.session.Session().get_credentials() is None  # the client could not reach S3
    name = f"proxied-{uuid.uuid4().hex[:8]}"
    spec = SPEC.replace("name: contract", f"name: {name}")
    spec += f"model: {{tracking_uri: '{mlflow_server.uri}'}}\n"
    here = open_registry(parse_spec(read_yaml(spec)), Layout(tmp_path / "here"))
    version = register(here, tmp_path, 1)
    assert "View run" not in capfd.readouterr().out  # MLflow's chatter is not the user's
    keys = [
        o["Key"]
        for page in moto_server.client("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=mlflow_server.bucket)
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("/driftloop/pipeline.skops") for k in keys), keys
    assert any(k.endswith("/driftloop/lineage.json") for k in keys), keys
    there = open_registry(parse_spec(read_yaml(spec)), Layout(tmp_path / "there"))
    entry = model_cache.fetch(there, Layout(tmp_path / "there"), version)
    assert entry.is_relative_to(tmp_path / "there")
    assert files(entry / model_cache.PACKAGE) == files(tmp_path / "p1")
    assert model_cache.read_info(entry)["lineage"] == {"batches": [{"batch_id": "b1"}]}


# -- in memory ------------------------------------------------------------------------------


def test_in_memory_registries_are_found_by_their_uri(tmp_path: Path) -> None:
    made = memory_store("contract")
    try:
        spec = parse_spec(read_yaml(SPEC + f"model: {{tracking_uri: '{made.uri}'}}\n"))
        assert open_registry(spec, Layout(tmp_path)) is made
        other = InMemoryRegistry("contract")  # not shared: its own store
        assert other.uri != made.uri
        assert open_registry(spec, Layout(tmp_path), other) is other  # an explicit one wins
    finally:
        forget(made.uri)


def test_an_in_memory_registry_that_is_down_does_not_answer(tmp_path: Path) -> None:
    registry = InMemoryRegistry("contract")
    register(registry, tmp_path, 1)
    registry.down = True
    for call in (
        lambda: registry.alias(CHAMPION),
        registry.versions,
        lambda: registry.set_alias(CHAMPION, "1"),
        lambda: registry.download("1", tmp_path / "dl"),
    ):
        with pytest.raises(RegistryUnavailableError, match="did not answer"):
            call()
    registry.down = False
    assert registry.alias(CHALLENGER) == "1"


def test_the_testing_module_exports_what_it_names_and_loads_no_mlflow() -> None:
    import driftloop.testing

    for name in driftloop.testing.__all__:
        assert getattr(driftloop.testing, name) is not None, name
    code = "import sys, driftloop.testing; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
