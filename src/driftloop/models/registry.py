"""The model registry: MLflow tracking and registry, aliases, and the promotion gate.

Embedded by default: tracking and registry in ``mlflow.db`` (SQLite) and artifacts in
``mlartifacts/`` inside the project. ``model.tracking_uri`` in the spec, or the
``MLFLOW_TRACKING_URI`` environment variable, points at a remote server instead. Aliases
(``champion``, ``challenger``) mark versions; MLflow's deprecated stages are not used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.core.errors import RegistryError, RegistryUnavailableError
from driftloop.core.layout import Layout
from driftloop.core.spec import Spec

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


# The user's own setting, read once: MLflow 3's set_tracking_uri writes this variable too, so
# reading it later would carry one project's store into the next project in the same process.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


_USER_REGISTRY_URI = os.environ.get("MLFLOW_REGISTRY_URI")


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child process, with the MLflow store variables as
    the user set them (MLflow itself rewrites them when a project's store is opened, which
    would point a child at the last project this process touched)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    if _USER_TRACKING_URI:
        env["MLFLOW_TRACKING_URI"] = _USER_TRACKING_URI
    if _USER_REGISTRY_URI:
        env["MLFLOW_REGISTRY_URI"] = _USER_REGISTRY_URI
    return {**env, **(extra or {})}


def tracking_uri(spec: Spec, layout: Layout) -> str:
    if spec.model.tracking_uri:
        return spec.model.tracking_uri
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    return f"sqlite:///{layout.mlflow_db.resolve()}"


def client(spec: Spec, layout: Layout) -> Any:
    """An MlflowClient on the project's tracking and registry store."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(spec, layout)
    if uri.startswith("sqlite:///"):
        ensure_sqlite_store(Path(uri.removeprefix("sqlite:///")), layout)
    if not log.isEnabledFor(logging.DEBUG):  # database migrations and similar are not news
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def never_written(spec: Spec, layout: Layout) -> bool:
    """A SQLite store that does not exist yet: no models, and a read-only look (listing
    versions, a server checking for a champion) must not create it (the train stage does)."""
    uri = tracking_uri(spec, layout)
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def ensure_sqlite_store(path: Path, layout: Layout) -> None:
    """Create an embedded MLflow store in one step, or not at all.

    MLflow creates a new SQLite store by running its schema migrations one after another; a
    process killed half-way leaves a store every later open fails on ("table ... already
    exists"). So the store is built under a temporary name and linked into place, which
    succeeds for exactly one process when several start at once.
    """
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    artifacts = layout.mlflow_artifacts.resolve().as_uri()
    try:
        with _quiet_mlflow():
            store = SqlAlchemyStore(f"sqlite:///{tmp}", artifacts)  # type: ignore[no-untyped-call]  # mlflow leaves __init__ untyped
            store.engine.dispose()
        # link fails if another process got there first: theirs stands
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)


def experiment_id(spec: Spec, layout: Layout, mlflow_client: Any) -> str:
    found = mlflow_client.get_experiment_by_name(spec.name)
    if found is not None:
        return str(found.experiment_id)
    artifacts = None
    if tracking_uri(spec, layout).startswith("sqlite:///"):
        artifacts = layout.mlflow_artifacts.resolve().as_uri()
    return str(mlflow_client.create_experiment(spec.name, artifact_location=artifacts))


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str
    model_uri: str


def log_and_register(
    spec: Spec,
    layout: Layout,
    *,
    package: Path,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    lineage: dict[str, Any],
    spec_text: str,
) -> Registered:
    """One MLflow run with params, metrics, spec and lineage; the model as a new version."""
    import mlflow

    from driftloop import __version__
    from driftloop.models.package import input_signature

    # The file's path, not an import: MLflow executes it (model from code) when it loads.
    code = importlib.util.find_spec("driftloop.models.mlflow_model_code")
    assert code is not None and code.origin is not None

    mlflow_client = client(spec, layout)
    exp = experiment_id(spec, layout, mlflow_client)
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "driftloop.yaml").write_text(spec_text, encoding="utf-8")
            (Path(tmp) / "lineage.json").write_text(
                json.dumps(lineage, indent=2, sort_keys=True, default=str), encoding="utf-8"
            )
            mlflow.log_artifacts(tmp, artifact_path="driftloop")
        with _quiet_mlflow():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=code.origin,  # a model from code: nothing is pickled
                artifacts={"driftloop": str(package)},
                signature=input_signature(spec),
                pip_requirements=_requirements(__version__),
                registered_model_name=spec.name,
                await_registration_for=0,
            )
    version = str(info.registered_model_version)
    mlflow_client.set_registered_model_alias(spec.name, CHALLENGER, version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(spec.name, version, key, value)
    return Registered(run.info.run_id, version, f"models:/{spec.name}/{version}")


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's advice (input examples, type hints) and chatter are not the user's concern."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if chatter.getvalue():
            log.debug("mlflow: %s", chatter.getvalue().strip())


def _requirements(version: str) -> list[str]:
    from importlib.metadata import version as installed

    pins = [
        f"{name}=={installed(name)}"
        for name in ("scikit-learn", "skops", "polars", "mlflow-skinny")
    ]
    return [f"driftloop=={version}", *pins]


def alias_version(spec: Spec, layout: Layout, alias: str) -> str | None:
    """The version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(spec, layout).get_model_version_by_alias(spec.name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryUnavailableError(
            f"the model registry at {tracking_uri(spec, layout)} did not answer: "
            f"{exc.message.splitlines()[0]}; check model.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


def set_alias(spec: Spec, layout: Layout, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client(spec, layout).set_registered_model_alias(spec.name, alias, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(
                f"model {spec.name!r} has no version {version}: {exc.message}; "
                "see 'driftloop models' for the versions"
            ) from None
        raise RegistryUnavailableError(
            f"the model registry at {tracking_uri(spec, layout)} refused to move alias "
            f"{alias!r} to v{version}: {exc.message.splitlines()[0]}; it is tried again"
        ) from None


def require_version(spec: Spec, layout: Layout, version: str) -> None:
    """Raise RegistryError unless the model has this version."""
    from mlflow.exceptions import MlflowException

    try:
        client(spec, layout).get_model_version(spec.name, str(version))
    except MlflowException:
        raise RegistryError(
            f"model {spec.name!r} has no version {version}; see 'driftloop models' for the versions"
        ) from None


def tag_version(spec: Spec, layout: Layout, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client(spec, layout)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(spec.name, version, key, value)


def load_predictor(spec: Spec, layout: Layout, model_uri: str) -> Any:
    """The driftloop predictor inside a registered model (downloads its artifacts)."""
    import mlflow

    from driftloop.models.package import Predictor

    client(spec, layout)
    folder = mlflow.artifacts.download_artifacts(f"{model_uri}/artifacts/driftloop")
    return Predictor(Path(folder))


def download_package(spec: Spec, layout: Layout, version: str, dest: Path) -> Path:
    """Download a version's driftloop package folder into ``dest``; return its path."""
    import mlflow

    client(spec, layout)
    uri = f"models:/{spec.name}/{version}/artifacts/driftloop"
    with _quiet_mlflow():
        return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dest)))


def package_info(
    name: str, version: str, run_id: str, metrics: dict[str, float], lineage: dict[str, Any]
) -> dict[str, Any]:
    """What serving shows of a version (``GET /model``); it never changes for a version."""
    return {
        "name": name,
        "version": str(version),
        "run_id": run_id,
        "metrics": {k: v for k, v in sorted(metrics.items()) if math.isfinite(v)},
        "lineage": lineage,
    }


def version_info(spec: Spec, layout: Layout, version: str) -> dict[str, Any]:
    """:func:`package_info` of a registered version, read from the registry."""
    import mlflow

    mlflow_client = client(spec, layout)
    found = mlflow_client.get_model_version(spec.name, str(version))
    run = mlflow_client.get_run(found.run_id)
    try:
        with _quiet_mlflow():
            text = mlflow.artifacts.load_text(f"runs:/{found.run_id}/driftloop/lineage.json")
        lineage = json.loads(text)
    except Exception as exc:  # an older or foreign run: the model still serves
        log.warning("v%s: no lineage in its run (%s)", version, exc)
        lineage = {}
    return package_info(spec.name, str(version), found.run_id, dict(run.data.metrics), lineage)


def versions(spec: Spec, layout: Layout) -> list[dict[str, Any]]:
    """Every version with its run's metrics, its aliases and its tags, newest first."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(spec, layout)
    try:
        aliases = dict(mlflow_client.get_registered_model(spec.name).aliases or {})
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise RegistryUnavailableError(
            f"the model registry at {tracking_uri(spec, layout)} did not answer: "
            f"{exc.message.splitlines()[0]}; check model.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None
    found = mlflow_client.search_model_versions(f"name='{spec.name}'")
    out = []
    for v in sorted(found, key=lambda v: int(v.version), reverse=True):
        run = mlflow_client.get_run(v.run_id) if v.run_id else None
        out.append(
            {
                "version": str(v.version),
                "aliases": sorted(a for a, ver in aliases.items() if str(ver) == str(v.version)),
                "run_id": v.run_id,
                "created": v.creation_timestamp,
                "metrics": dict(run.data.metrics) if run else {},
                "tags": dict(v.tags or {}),
            }
        )
    return out
