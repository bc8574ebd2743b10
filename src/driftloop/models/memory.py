"""A registry in this process's memory, for tests (exported by :mod:`driftloop.testing`).

It keeps what :class:`~driftloop.models.registry.Registry` promises and nothing more:
versions with their package files, params, metrics, tags and lineage, and aliases. A spec
chooses it with ``model.tracking_uri: memory://<name>``: every registry opened on that URI in
this process is the same one (like SQLite's shared in-memory databases), so a whole pass, a
gate or a rollback runs against it with no server, no store on disk and no MLflow import.

``down = True`` makes every call fail as a registry that does not answer
(``RegistryUnavailableError``), to test what the runner does with a transient failure.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftloop.core.errors import RegistryError, RegistryUnavailableError
from driftloop.models.registry import CHALLENGER, ModelVersion, Registered

SCHEME = "memory://"


@dataclass
class _Stored:
    run_id: str
    created: int
    files: dict[str, bytes]  # the package folder: relative path -> content
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    lineage: dict[str, Any]
    spec_text: str
    version_tags: dict[str, str] = field(default_factory=dict)


class InMemoryRegistry:
    """One registered model in memory (see the module docstring)."""

    def __init__(self, model: str, uri: str | None = None) -> None:
        self.model = model
        self.uri = uri or f"{SCHEME}{uuid.uuid4().hex[:12]}"
        self.down = False
        self._lock = threading.Lock()
        self._versions: dict[str, _Stored] = {}
        self._aliases: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"InMemoryRegistry({self.model!r}, {self.uri!r})"

    def _answer(self) -> None:
        if self.down:
            raise RegistryUnavailableError(
                f"the model registry at {self.uri} did not answer (down); it is tried again"
            )

    def _stored(self, version: str) -> _Stored:
        found = self._versions.get(str(version))
        if found is None:
            raise RegistryError(
                f"model {self.model!r} has no version {version}; "
                "see 'driftloop models' for the versions"
            )
        return found

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
        self._answer()
        files = {
            p.relative_to(package).as_posix(): p.read_bytes()
            for p in sorted(package.rglob("*"))
            if p.is_file()
        }
        with self._lock:
            version = str(len(self._versions) + 1)
            stored = _Stored(
                run_id=uuid.uuid4().hex,
                created=int(time.time() * 1000),
                files=files,
                params={k: str(v)[:500] for k, v in params.items()},
                metrics=dict(metrics),
                tags=dict(tags),
                lineage=lineage,
                spec_text=spec_text,
                version_tags=dict(tags),
            )
            self._versions[version] = stored
            self._aliases[CHALLENGER] = version
        return Registered(stored.run_id, version)

    def alias(self, alias: str) -> str | None:
        self._answer()
        with self._lock:
            return self._aliases.get(alias)

    def set_alias(self, alias: str, version: str) -> None:
        self._answer()
        with self._lock:
            self._stored(version)
            self._aliases[alias] = str(version)

    def versions(self) -> list[ModelVersion]:
        self._answer()
        with self._lock:
            return [self._version(v) for v in sorted(self._versions, key=int, reverse=True)]

    def _version(self, version: str) -> ModelVersion:
        stored = self._versions[version]
        return ModelVersion(
            version=version,
            run_id=stored.run_id,
            created=stored.created,
            aliases=sorted(a for a, v in self._aliases.items() if v == version),
            tags=dict(stored.version_tags),
            metrics=dict(stored.metrics),
        )

    def get_version(self, version: str) -> ModelVersion | None:
        self._answer()
        with self._lock:
            return self._version(str(version)) if str(version) in self._versions else None

    def tag(self, version: str, tags: dict[str, str]) -> None:
        self._answer()
        with self._lock:
            self._stored(version).version_tags.update(tags)

    def lineage(self, version: str) -> dict[str, Any]:
        self._answer()
        with self._lock:
            return self._stored(version).lineage

    def download(self, version: str, dest: Path) -> Path:
        self._answer()
        with self._lock:
            files = dict(self._stored(version).files)
        folder = dest / "driftloop"
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


_shared: dict[tuple[str, str], InMemoryRegistry] = {}
_shared_lock = threading.Lock()


def memory_registry(uri: str, model: str) -> InMemoryRegistry:
    """The process's in-memory registry of ``model`` at ``uri``, created on first use."""
    with _shared_lock:
        found = _shared.get((uri, model))
        if found is None:
            found = _shared[(uri, model)] = InMemoryRegistry(model, uri)
        return found


def forget(uri: str) -> None:
    """Drop every model of an in-memory store (a test's cleanup)."""
    with _shared_lock:
        for key in [k for k in _shared if k[0] == uri]:
            del _shared[key]
