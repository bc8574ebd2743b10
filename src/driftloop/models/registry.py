"""The model registry: what driftloop needs of one (the ``Registry`` protocol) and the choice
of an implementation, made once, at the edge, from the store's URI.

    Registry                   register a version, aliases, versions and tags, packages
     ├── MlflowRegistry        (models/mlflow_registry.py) MLflow: the embedded SQLite store
     │                         in the project by default, or a tracking server
     └── InMemoryRegistry      (models/memory.py, exported by driftloop.testing) a process's
                               memory, for tests: ``model.tracking_uri: memory://<name>``

The store is ``model.tracking_uri`` from the spec, else the ``MLFLOW_TRACKING_URI`` variable,
else ``sqlite:///<project>/mlflow.db``. Aliases (``champion``, ``challenger``) mark versions.

Errors: a registry that does not answer raises ``RegistryUnavailableError`` (transient: the
runner tries again); asking for a version the model does not have raises ``RegistryError``.
Reading a store that was never written (listing versions, a server looking for a champion)
finds nothing and creates nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from driftloop.core.layout import Layout
from driftloop.core.spec import Spec

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Registered:
    """A version just registered, and the run that logged it."""

    run_id: str
    version: str


@dataclass(frozen=True)
class ModelVersion:
    """A registered version as a listing shows it."""

    version: str
    run_id: str | None
    created: int | None  # milliseconds since the epoch
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # its run's


class Registry(Protocol):
    """One registered model (``model``) in one store (``uri``).

    ``uri`` names the store: the model cache keys its entries by it, so two stores never
    share one. Versions are strings of increasing integers ("1", "2", ...).
    """

    model: str
    uri: str

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
        """A new version from a package folder, logged with its run's params, metrics and
        tags (set on the version too), its lineage and the spec; it becomes ``challenger``."""
        ...

    def alias(self, alias: str) -> str | None:
        """The version an alias points at; None when it (or the model) does not exist."""
        ...

    def set_alias(self, alias: str, version: str) -> None:
        """Point an alias at a version (RegistryError when the model has no such version)."""
        ...

    def versions(self) -> list[ModelVersion]:
        """Every version, newest first; [] when the model does not exist."""
        ...

    def get_version(self, version: str) -> ModelVersion | None:
        """One version, or None when the model has no such version."""
        ...

    def tag(self, version: str, tags: dict[str, str]) -> None:
        """Set tags on a version (RegistryError when there is no such version)."""
        ...

    def lineage(self, version: str) -> dict[str, Any]:
        """The lineage logged with a version ({} when its run has none)."""
        ...

    def download(self, version: str, dest: Path) -> Path:
        """Copy a version's package folder into ``dest``; return the package folder."""
        ...


def store_uri(spec: Spec, layout: Layout) -> str:
    """The store the user configured: the spec's, the environment's, or the project's own."""
    if spec.model.tracking_uri:
        return spec.model.tracking_uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{layout.mlflow_db.resolve()}"


def _mlflow(uri: str, spec: Spec, layout: Layout) -> Registry:
    from driftloop.models.mlflow_registry import MlflowRegistry

    artifacts = layout.mlflow_artifacts.resolve() if uri.startswith("sqlite:") else None
    return MlflowRegistry(uri, spec.name, artifacts=artifacts)


def _memory(uri: str, spec: Spec, layout: Layout) -> Registry:
    from driftloop.models.memory import memory_registry

    return memory_registry(uri, spec.name)


# Every implementation by name; the contract test (tests/test_registry_contract.py) runs
# over each one.
KINDS: dict[str, Callable[[str, Spec, Layout], Registry]] = {"mlflow": _mlflow, "memory": _memory}

# A URI scheme's implementation; every scheme not here is MLflow's (sqlite, file, http(s),
# databricks, ...).
SCHEMES = {"memory": "memory"}


def kind_of(uri: str) -> str:
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    return SCHEMES.get(scheme, "mlflow")


def open_registry(spec: Spec, layout: Layout, registry: Registry | None = None) -> Registry:
    """The project's registry: ``registry`` when given (a caller's own), else the
    implementation the store's URI names (see :data:`SCHEMES`)."""
    if registry is not None:
        return registry
    uri = store_uri(spec, layout)
    return KINDS[kind_of(uri)](uri, spec, layout)


def package_info(
    name: str, version: str, run_id: str | None, metrics: dict[str, float], lineage: dict[str, Any]
) -> dict[str, Any]:
    """What serving shows of a version (``GET /model``); it never changes for a version."""
    return {
        "name": name,
        "version": str(version),
        "run_id": run_id,
        "metrics": {k: v for k, v in sorted(metrics.items()) if math.isfinite(v)},
        "lineage": lineage,
    }


def version_info(registry: Registry, version: str) -> dict[str, Any]:
    """:func:`package_info` of a registered version, read from the registry."""
    from driftloop.core.errors import RegistryError

    found = registry.get_version(version)
    if found is None:
        raise RegistryError(
            f"model {registry.model!r} has no version {version}; "
            "see 'driftloop models' for the versions"
        )
    lineage = registry.lineage(version)
    return package_info(registry.model, found.version, found.run_id, found.metrics, lineage)


def lost_versions(
    recorded: list[dict[str, Any]],
    present: dict[str, str | None],
    store: str,
    reported: set[str],
) -> list[dict[str, Any]]:
    """The versions the state database saw registered in this store that the registry no
    longer holds as they were (pure).

    ``recorded``: the ``ModelRegistered`` payloads (oldest first); ``present``: the registry's
    versions now, each with its run id; ``store``: this store's id (``cache.store_id``; a
    payload without one, from before it was recorded, counts as this store's); ``reported``:
    run ids a ``RegistryHistoryLost`` event already named, so a loss is reported once.
    """
    lost = []
    for event in recorded:
        run_id, version = str(event["run_id"]), str(event["version"])
        if event.get("store") not in (None, store) or run_id in reported:
            continue
        if present.get(version, "") != run_id:
            lost.append({"version": version, "run_id": run_id, "now": present.get(version)})
    return lost


def history_lost_message(model: str, uri: str, lost: list[dict[str, Any]]) -> str:
    """What a registry that lost versions this project registered means, and what to do."""
    from driftloop.core.redact import redact

    gone = [v for v in lost if v["now"] is None]
    other = [v for v in lost if v["now"] is not None]
    parts = []
    if gone:
        parts.append("no longer has " + ", ".join(f"v{v['version']}" for v in gone))
    if other:
        parts.append(
            "holds another model under "
            + ", ".join(
                f"v{v['version']} (run {v['now'][:8]}, was {v['run_id'][:8]})" for v in other
            )
        )
    return redact(
        f"the model registry at {uri} lost its history: model {model!r} {' and '.join(parts)} "
        "that this project registered (was the MLflow store deleted or replaced?). Versions "
        "are told apart by their run id, so no old copy is served for a new one, but the "
        "decisions recorded for the lost versions no longer name a model. Restore the store "
        "from a backup (model.tracking_uri / MLFLOW_TRACKING_URI) to keep the history; "
        "otherwise promote a version of the new store ('driftloop models'); this is reported "
        "once, as a RegistryHistoryLost event"
    )
