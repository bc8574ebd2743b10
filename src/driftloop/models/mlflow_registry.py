"""The MLflow registry: a run per training, the model as a version of a registered model.

Embedded by default: tracking and registry in ``mlflow.db`` (SQLite) and artifacts in
``mlartifacts/`` inside the project; any other MLflow tracking URI points at a server.
MLflow's deprecated stages are not used, only aliases.

No MLflow process-wide state is left behind. Every read, alias move, tag and download goes
through an ``MlflowClient`` or ``download_artifacts`` given this registry's URI explicitly;
the one call that needs MLflow's fluent API (``mlflow.pyfunc.log_model`` inside a run, when
registering) runs inside :func:`_fluent_store`, which points the fluent API at this store for
that block only, under a process-wide lock, and then puts back what was there: the user's
own ``mlflow.set_tracking_uri`` and the ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``
variables (MLflow writes its choice into them "so that subprocesses inherit it"). So two
projects in one process, a notebook's own MLflow setting and a child process (a server, the
loop) each see the store they were given.

Against ``mlflow server`` with proxied artifacts (``--serve-artifacts``), artifacts go up and
come down through the server's ``mlflow-artifacts`` route: the driftloop side needs no
credentials for the server's artifact store.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from driftloop.core.errors import RegistryError, RegistryUnavailableError
from driftloop.core.redact import redact
from driftloop.models.registry import CHALLENGER, ModelVersion, Registered, Registry

log = logging.getLogger(__name__)

PACKAGE = "driftloop"  # the package folder's name among a model's MLflow artifacts

_STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# A run ended against a server prints "View run ... at: <url>" on stdout unless told not to.
_QUIET_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
_fluent_lock = threading.Lock()  # one block at a time points MLflow's fluent API anywhere


@contextlib.contextmanager
def _fluent_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API (runs, model logging) pointed at ``uri`` for one block; afterwards
    its tracking and registry URIs and their environment variables are as they were."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _fluent_lock:
        saved_env = {name: os.environ.get(name) for name in (*_STORE_VARIABLES, _QUIET_URLS)}
        saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
        saved_registry = getattr(registry_utils, "_registry_uri", None)
        try:
            os.environ.setdefault(_QUIET_URLS, "true")
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield
        finally:
            # None unsets, as it was (MLflow's annotation says str | Path; its code takes None)
            tracking_utils.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]
            registry_utils._registry_uri = saved_registry  # set_registry_uri refuses None
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# The path of a tracking server's artifact proxy (``--serve-artifacts``).
_ARTIFACT_ROUTE = "/mlflow-artifacts/"
# MLflow error codes of a server that may answer later.
_TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
)


def _transient(exc: Any) -> bool:
    """A failure that may pass by itself: no answer (MLflow's "API request to ... failed
    with exception ...", after its own retries) or a server error."""
    message = str(getattr(exc, "message", "") or "")
    no_answer = message.startswith("API request to ") and "failed with exception" in message
    return no_answer or getattr(exc, "error_code", None) in _TRANSIENT_CODES


def _first_cause(exc: BaseException) -> Any:
    """The failure to report: the artifact proxy's, when one is in ``exc``'s chain. (A run
    that fails to upload is ended as FAILED on the way out; on a server whose artifact store
    broke the connection, that second request fails too and hides the first.)"""
    pending: list[BaseException] = [exc]
    visited: set[int] = set()
    while pending:  # both links: an error raised "from" its cause, while handling another
        seen = pending.pop(0)
        if id(seen) in visited:
            continue
        visited.add(id(seen))
        if _ARTIFACT_ROUTE in str(getattr(seen, "message", seen)):
            return seen
        pending += [e for e in (seen.__cause__, seen.__context__) if e is not None]
    return exc


def _quiet_by_default() -> None:
    if not log.isEnabledFor(logging.DEBUG):  # database migrations and similar are not news
        logging.getLogger("mlflow").setLevel(logging.WARNING)


class MlflowRegistry:
    """A registered model in an MLflow store (see the module docstring)."""

    def __init__(self, uri: str, model: str, *, artifacts: Path | None = None) -> None:
        self.uri = uri
        self.model = model
        self.artifacts = artifacts  # where an embedded store keeps artifacts
        self._client: Any = None

    def __repr__(self) -> str:
        return f"MlflowRegistry({redact(self.uri)!r}, {self.model!r})"

    # -- the store ------------------------------------------------------------------------
    @property
    def _sqlite_path(self) -> Path | None:
        return (
            Path(self.uri.removeprefix("sqlite:///")) if self.uri.startswith("sqlite:///") else None
        )

    def never_written(self) -> bool:
        """A SQLite store that does not exist yet: it has no models, and a read-only look
        must not create it (registering does)."""
        path = self._sqlite_path
        return path is not None and not path.is_file()

    def client(self, *, write: bool = False) -> Any:
        """An MlflowClient on the store (created on the first write to an embedded store)."""
        if write and self._sqlite_path is not None:
            ensure_sqlite_store(self._sqlite_path, self.artifacts or self._sqlite_path.parent)
        if self._client is None:
            from mlflow import MlflowClient

            _quiet_by_default()
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _unavailable(self, exc: Any, doing: str) -> RegistryUnavailableError:
        first = str(getattr(exc, "message", exc)).splitlines()[0] if str(exc) else repr(exc)
        if _ARTIFACT_ROUTE in first:
            # The server answered; its proxy could not reach the store behind it.
            return RegistryUnavailableError(
                redact(
                    f"the model registry at {self.uri} answers, but its artifact store did not "
                    f"({doing}): {first}; the tracking server keeps the models' files in the "
                    "store its 'mlflow server --artifacts-destination' names: check that the "
                    "bucket exists and that the server's own credentials and endpoint reach "
                    "it (driftloop needs none); it is tried again"
                )
            )
        return RegistryUnavailableError(
            redact(
                f"the model registry at {self.uri} did not answer ({doing}): {first}; check "
                "that the tracking server runs and that model.tracking_uri / "
                "MLFLOW_TRACKING_URI names it; it is tried again"
            )
        )

    @contextlib.contextmanager
    def _answering(self, doing: str) -> Iterator[None]:
        """MLflow's failures while ``doing`` as driftloop's ``RegistryUnavailableError``,
        which the runner tries again: a server or artifact store that did not answer, and a
        request the server refused (a permission, a race, a server-side setting: fixed where
        the server is, without a new run key, so retried rather than failed for good)."""
        from mlflow.exceptions import MlflowException
        from requests import RequestException  # MLflow's HTTP client

        try:
            yield
        except (MlflowException, RequestException) as raised:
            exc = _first_cause(raised)
            if isinstance(exc, RequestException):  # an artifact request: HTTP, connection
                raise self._unavailable(exc, doing) from None
            if _transient(exc):
                raise self._unavailable(exc, doing) from None
            detail = exc.message.splitlines()[0] if exc.message else ""
            raise RegistryUnavailableError(
                redact(
                    f"the model registry at {self.uri} refused {doing} ({exc.error_code}): "
                    f"{detail}; see the tracking server's log; it is tried again"
                )
            ) from None

    def _no_version(self, version: str, detail: str = "") -> RegistryError:
        return RegistryError(
            f"model {self.model!r} has no version {version}{detail}; "
            "see 'driftloop models' for the versions"
        )

    # -- the protocol ---------------------------------------------------------------------
    def register(
        self,
        package: Path,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        lineage: dict[str, Any],
        spec_text: str,
    ) -> Registered:
        """One MLflow run with params, metrics, spec and lineage; the model as a new version."""
        client = self.client(write=True)
        with self._answering("registering a new version"):
            with tempfile.TemporaryDirectory() as spare:
                if package.name != PACKAGE:  # MLflow keeps the folder's name: artifacts/<name>
                    package = Path(shutil.copytree(package, Path(spare) / PACKAGE))
                run_id, version = self._log(
                    client, package, params, metrics, tags, lineage, spec_text
                )
            client.set_registered_model_alias(self.model, CHALLENGER, version)
        return Registered(run_id, version)

    def _log(
        self,
        client: Any,
        package: Path,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        lineage: dict[str, Any],
        spec_text: str,
    ) -> tuple[str, str]:
        import mlflow

        from driftloop import __version__
        from driftloop.models.package import package_signature

        # The file's path, not an import: MLflow executes it (model from code) when it loads.
        code = importlib.util.find_spec("driftloop.models.mlflow_model_code")
        assert code is not None and code.origin is not None
        experiment = self._experiment_id(client)
        with _fluent_store(self.uri), mlflow.start_run(experiment_id=experiment) as run:
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
                    artifacts={PACKAGE: str(package)},
                    signature=package_signature(package),
                    pip_requirements=_requirements(__version__),
                )
                # The version with its tags in one request (not one request per tag after)
                version = mlflow.register_model(
                    info.model_uri, self.model, await_registration_for=0, tags=tags
                )
        return str(run.info.run_id), str(version.version)

    def _experiment_id(self, client: Any) -> str:
        found = client.get_experiment_by_name(self.model)
        if found is not None:
            return str(found.experiment_id)
        location = self.artifacts.as_uri() if self.artifacts is not None else None
        return str(client.create_experiment(self.model, artifact_location=location))

    def alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        if self.never_written():
            return None
        try:
            return str(self.client().get_model_version_by_alias(self.model, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise self._unavailable(exc, f"reading alias {alias!r}") from None

    def set_alias(self, alias: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        if self.never_written():
            raise self._no_version(version)
        try:
            self.client().set_registered_model_alias(self.model, alias, str(version))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise self._no_version(version, f": {exc.message}") from None
            raise self._unavailable(exc, f"moving alias {alias!r} to v{version}") from None

    def versions(self) -> list[ModelVersion]:
        from mlflow.exceptions import MlflowException

        if self.never_written():
            return []
        client = self.client()
        try:
            aliases = dict(client.get_registered_model(self.model).aliases or {})
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise self._unavailable(exc, "listing versions") from None
        with self._answering("listing versions"):
            found = client.search_model_versions(f"name='{self.model}'")
            runs = self._runs(client, [v.run_id for v in found if v.run_id])
            return [
                self._version(v, aliases, runs)
                for v in sorted(found, key=lambda v: int(v.version), reverse=True)
            ]

    def _runs(self, client: Any, run_ids: list[str]) -> dict[str, Any]:
        """The versions' runs from one search of the model's experiment, not one request per
        version (100 versions: one query instead of 100); a run elsewhere is asked alone."""
        experiment = client.get_experiment_by_name(self.model) if run_ids else None
        if experiment is None:
            return {}
        wanted = ", ".join(f"'{r}'" for r in run_ids)
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_id IN ({wanted})",
            max_results=len(run_ids),
        )
        return {run.info.run_id: run for run in found}

    def _version(
        self, found: Any, aliases: dict[str, Any], runs: dict[str, Any] | None = None
    ) -> ModelVersion:
        run = (runs or {}).get(found.run_id)
        if run is None and found.run_id:
            run = self.client().get_run(found.run_id)
        version = str(found.version)
        return ModelVersion(
            version=version,
            run_id=found.run_id,
            created=found.creation_timestamp,
            aliases=sorted(a for a, v in aliases.items() if str(v) == version),
            tags=dict(found.tags or {}),
            metrics=dict(run.data.metrics) if run else {},
        )

    def get_version(self, version: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        if self.never_written():
            return None
        client = self.client()
        try:
            found = client.get_model_version(self.model, str(version))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise self._unavailable(exc, f"reading v{version}") from None
        with self._answering(f"reading v{version}'s run"):
            return self._version(found, {a: version for a in (found.aliases or [])})

    def tag(self, version: str, tags: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        if self.never_written():
            raise self._no_version(version)
        client = self.client()
        try:
            for key, value in tags.items():
                client.set_model_version_tag(self.model, str(version), key, value)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise self._no_version(version) from None
            raise self._unavailable(exc, f"tagging v{version}") from None

    def lineage(self, version: str) -> dict[str, Any]:
        found = self.get_version(version)
        if found is None:
            raise self._no_version(version)
        try:
            with _quiet_mlflow(), tempfile.TemporaryDirectory() as tmp:
                with self._answering(f"reading v{version}'s lineage"):
                    got = self.client().download_artifacts(
                        found.run_id, "driftloop/lineage.json", tmp
                    )
                text = Path(got).read_text(encoding="utf-8")
        except RegistryUnavailableError:
            raise  # not "no lineage": a copy cached now would keep {} for good
        except Exception as exc:  # an older or foreign run: the model still serves
            log.warning("v%s: no lineage in its run (%s)", version, redact(str(exc)))
            return {}
        lineage: dict[str, Any] = json.loads(text)
        return lineage

    def download(self, version: str, dest: Path) -> Path:
        import mlflow

        if self.get_version(version) is None:
            raise self._no_version(version)
        # Not a models:/ URI: MLflow resolves those with the process-wide registry URI, not
        # the one passed in. The version's storage location is asked of this store's client.
        with self._answering(f"downloading v{version}"), _quiet_mlflow():
            location = self._artifact_location(version)
            got = mlflow.artifacts.download_artifacts(
                f"{location.rstrip('/')}/artifacts/{PACKAGE}",
                dst_path=str(dest),
                tracking_uri=self.uri,
            )
        return Path(got)

    def _artifact_location(self, version: str) -> str:
        """Where a version's model artifacts are (``mlflow-artifacts:/...`` on a server that
        serves artifacts, ``file:...`` embedded), asked of this store alone."""
        client = self.client()
        location = str(client.get_model_version_download_uri(self.model, str(version)))
        if location.startswith("models:/"):  # a logged model without a storage location
            found = client.get_model_version(self.model, str(version))
            location = str(client.get_logged_model(found.model_id).artifact_location)
        return location


def load_predictor(registry: Registry, model_uri: str) -> Any:
    """The driftloop predictor inside an MLflow model URI (``models:/<name>@champion``,
    ``models:/<name>/<version>``) of an MLflow registry, downloaded by MLflow itself."""
    import mlflow

    from driftloop.models.package import Predictor

    if not isinstance(registry, MlflowRegistry):
        raise RegistryError(f"{model_uri} is an MLflow model URI; {registry!r} is not MLflow's")
    registry.client()
    with _quiet_mlflow(), _fluent_store(registry.uri):  # models:/ resolves process-wide
        folder = mlflow.artifacts.download_artifacts(
            f"{model_uri}/artifacts/driftloop", tracking_uri=registry.uri, registry_uri=registry.uri
        )
    return Predictor(Path(folder))


def ensure_sqlite_store(path: Path, artifacts: Path) -> None:
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
    try:
        with _quiet_mlflow():
            store = SqlAlchemyStore(f"sqlite:///{tmp}", artifacts.resolve().as_uri())  # type: ignore[no-untyped-call]  # mlflow leaves __init__ untyped
            store.engine.dispose()
        # link fails if another process got there first: theirs stands
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)


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
