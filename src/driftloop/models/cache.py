"""Registered model packages kept on this machine:
``.driftloop/models/<name>-<store>/<version>-<run id>/``.

A registered version never changes, so a copy of its package is as good as a download. The
train stage leaves each version it registers here, and the server fills in what it
downloads; a server then starts from the cache without waiting for the registry. ``<store>``
is a short hash of the registry's URI, so two registries never share an entry.

A version number alone is not an identity: a registry whose store was deleted and made again
numbers its next model v1 again, and an entry keyed by the number served the old v1 for the
new one. So an entry is keyed by the version *and* the run that logged it (a random id the
registry never repeats); a lookup names both. Entries are written to a hidden folder and
renamed, with ``_SUCCESS`` last, like every stage output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from driftloop.core.errors import RegistryError
from driftloop.core.layout import Layout, is_complete, seal
from driftloop.models.registry import Registry

PACKAGE = "driftloop"  # the package folder inside an entry (as in the MLflow artifacts)
INFO = "info.json"  # what the registry says of the version (run, metrics, lineage)
COMPILED = "compiled"  # the verified compiled inference path (driftloop.inference), if any


def store_id(store_uri: str) -> str:
    """A short, stable name of a registry's store (its URI hashed: no credential shows)."""
    return hashlib.sha256(store_uri.encode()).hexdigest()[:10]


def entry(layout: Layout, name: str, store_uri: str, version: str, run_id: str) -> Path:
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise RegistryError(
            f"model {name!r} v{version}: the registry gave no usable run id ({run_id!r}); "
            "a cached copy is keyed by it, so the version cannot be cached"
        )
    return layout.model_cache / f"{name}-{store_id(store_uri)}" / f"{version}-{run_id}"


def lookup(layout: Layout, name: str, store_uri: str, version: str, run_id: str) -> Path | None:
    """The cached entry of a version logged by ``run_id``, or None when it is not (completely)
    there."""
    folder = entry(layout, name, store_uri, version, run_id)
    return folder if is_complete(folder) else None


def store(
    layout: Layout,
    name: str,
    store_uri: str,
    version: str,
    *,
    run_id: str,
    package: Path,
    info: dict[str, Any],
) -> Path:
    """Copy a package folder into the cache (atomically); return the entry."""
    final = entry(layout, name, store_uri, version, run_id)
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(package, tmp / PACKAGE)
        (tmp / INFO).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        seal(tmp, {"model": name, "version": str(version), "run_id": run_id})
        if final.exists() and not is_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # a copy that was interrupted
        try:
            tmp.rename(final)
        except OSError:
            # Another process (a second worker) stored it first; an entry in use is never
            # replaced, since versions do not change.
            if not is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch(registry: Registry, layout: Layout, version: str) -> Path:
    """The cache entry of a registered version, downloaded into the cache when absent.

    The one way serving, monitoring and the promotion gate get a version's package. The
    registry is asked which run the version is (one small call); a version trained or used
    on this machine before is then read from disk, with no download.
    """
    import tempfile

    from driftloop.models.registry import version_info

    found = registry.get_version(version)
    if found is None:
        raise RegistryError(
            f"model {registry.model!r} has no version {version}; "
            "see 'driftloop models' for the versions"
        )
    run_id = found.run_id or ""
    cached = lookup(layout, registry.model, registry.uri, version, run_id)
    if cached is not None:
        return cached
    info = version_info(registry, version)
    with tempfile.TemporaryDirectory(prefix="driftloop-model-") as tmp:
        package = registry.download(version, Path(tmp))
        return store(
            layout,
            registry.model,
            registry.uri,
            version,
            run_id=run_id,
            package=package,
            info=info,
        )


def read_info(folder: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((folder / INFO).read_text(encoding="utf-8"))
    return info
