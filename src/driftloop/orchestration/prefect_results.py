"""Where Prefect keeps the stage tasks' results: beside the project's outputs on S3.

A stage task persists its result (``persist_result=True``): Prefect writes a result record
under its cache key (driftloop's run key, :func:`driftloop.orchestration.prefect_flow.
_run_key`), and a later task run with the same key is a cache hit only if it can read that
record. By default the record goes to ``PREFECT_LOCAL_STORAGE_PATH`` of the process that ran
the task, and that setting travels with the flow's settings to the Dask workers: on a
cluster of several machines each worker would write the flow machine's path on its own
disk (or fail where it may not), and no other machine would ever see the record.

With ``outputs: s3://bucket/prefix`` in the spec the records go to
``s3://bucket/prefix/prefect-results/`` instead (Prefect's ``RemoteFileSystem``, fsspec's
s3fs, reached with the spec's ``storage:`` settings and the standard AWS variables, the
same way as every other S3 address of the project), so every worker and the flow share one
cache. Prefect takes a result storage only as a block saved on its server, so the flow run
saves it (``remote-file-system/driftloop-results-<project>``, where S3 is, no credentials).
A project with its outputs in its folder keeps Prefect's default (one machine).

Prefect is imported when the storage is made: only a flow run calls this.
"""

from __future__ import annotations

import re
from typing import Any

from driftloop.core.spec import Spec

FOLDER = "prefect-results"  # under the outputs root


def result_storage(spec: Spec) -> Any | None:
    """The storage the stage tasks' results go to, or None (Prefect's default: this
    machine's ``PREFECT_LOCAL_STORAGE_PATH``). No credentials in it: only where S3 is."""
    if spec.outputs is None:
        return None
    from prefect.filesystems import RemoteFileSystem

    client: dict[str, str] = {}
    settings: dict[str, Any] = {}
    if spec.storage.endpoint_url:
        client["endpoint_url"] = spec.storage.endpoint_url
    if spec.storage.region:
        client["region_name"] = spec.storage.region
    if spec.storage.profile:
        settings["profile"] = spec.storage.profile
    if client:
        settings["client_kwargs"] = client
    return RemoteFileSystem(basepath=f"{spec.outputs.rstrip('/')}/{FOLDER}", settings=settings)


def block_name(spec: Spec) -> str:
    """The name the storage is saved under on the Prefect server (one per project)."""
    return "driftloop-results-" + re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")


def stored(task: Any, spec: Spec) -> Any:
    """``task`` with its results kept where :func:`result_storage` says (itself when that
    is Prefect's default). Prefect takes only a storage block saved on its server (a task
    run on a worker reads it from there): it is saved as :func:`block_name`, a
    ``remote-file-system`` block that names the place and holds no credentials."""
    storage = result_storage(spec)
    if storage is None:
        return task
    storage.save(block_name(spec), overwrite=True)
    return task.with_options(result_storage=storage)
