"""The stage runner: run keys, cache hits, retries with backoff, stage-run records.

A stage run key is the hash of (stage, stage version, the spec sections it reads, its input
fingerprints). A key that already succeeded is a cache hit; a key that failed on bad data is
not retried until the data or the spec changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from driftloop.core.errors import (
    DriftloopError,
    TransientError,
)
from driftloop.core.layout import (
    Layout,
    is_complete,
    read_manifest,
)
from driftloop.core.state import Batch, StateDB

log = logging.getLogger(__name__)


Outcome = Literal["ran", "cached", "failed", "failed-earlier", "waiting"]


MAX_ATTEMPTS = 12  # a transient failure is tried this many times in all (about 20 minutes)


BACKOFF_SECONDS = (1.0, 300.0)  # the first wait, and the longest


class StageReport:
    """What one stage did for one batch; a cache hit's manifest is read when first used."""

    def __init__(
        self,
        stage: str,
        batch_id: str,
        outcome: Outcome,
        seconds: float = 0.0,
        manifest: dict[str, Any] | None = None,
        error: str | None = None,
        *,
        key: str | None = None,
        manifest_dir: Path | None = None,
    ) -> None:
        self.stage, self.batch_id, self.outcome = stage, batch_id, outcome
        self.seconds, self.error, self.key = seconds, error, key
        self._manifest, self._manifest_dir = manifest, manifest_dir

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            d = self._manifest_dir
            self._manifest = read_manifest(d) if d is not None and is_complete(d) else {}
        return self._manifest

    def __repr__(self) -> str:
        return (
            f"StageReport(stage={self.stage!r}, batch_id={self.batch_id!r}, "
            f"outcome={self.outcome!r}, seconds={self.seconds!r}, error={self.error!r})"
        )


def run_key(stage: str, version: str, spec_hash: str, inputs: list[str]) -> str:
    text = json.dumps([stage, version, spec_hash, sorted(inputs)])
    return hashlib.sha256(text.encode()).hexdigest()


def _cached(db: StateDB, key: str, out_dir: Path) -> bool:
    return (
        db.succeeded(key) and is_complete(out_dir) and read_manifest(out_dir).get("run_key") == key
    )


def keyed_run(
    db: StateDB,
    layout: Layout,
    stage: str,
    batch: Batch,
    key: str,
    out_dir: Path,
    work: Callable[[float], dict[str, Any]],
    *,
    backoff: bool = False,
    current: Mapping[tuple[str, str], str] | None = None,
) -> StageReport:
    """Run ``work`` unless ``key`` already succeeded (cache hit) or failed on its data.

    A DriftloopError is a failure of the data or spec: recorded and not retried until the
    key changes. Any other exception is recorded as an error and retried on the next pass;
    with ``backoff`` (the event loop) only once a wait that doubles with each attempt has
    passed (1 s, 2 s, 4 s, ... up to 5 minutes), and not after ``MAX_ATTEMPTS``.
    """
    if current is not None and current.get((stage, batch.batch_id)) == key:
        # the last run started for this output is this key's and it succeeded
        if is_complete(out_dir):
            return StageReport(stage, batch.batch_id, "cached", key=key, manifest_dir=out_dir)
    elif _cached(db, key, out_dir):
        if current is not None:  # known now: the next pass needs no manifest read
            db.adopt_current(stage, batch.batch_id, key)
        return StageReport(stage, batch.batch_id, "cached", key=key, manifest_dir=out_dir)
    info = db.run_info(key) or {}
    if info.get("status") == "failed":
        return StageReport(stage, batch.batch_id, "failed-earlier", error=info["error"])
    if info.get("status") == "error" and backoff:
        attempts = int(info["attempts"])
        if attempts >= MAX_ATTEMPTS:
            why = f"gave up after {attempts} attempts; the last: {info['error']}"
            return StageReport(stage, batch.batch_id, "failed-earlier", error=why)
        first, longest = BACKOFF_SECONDS
        wait = min(longest, first * 2 ** (attempts - 1))
        finished = datetime.fromisoformat(info["finished_at"])
        if (datetime.now(UTC) - finished).total_seconds() < wait:
            return StageReport(stage, batch.batch_id, "waiting", error=info["error"])
    db.start_run(key, stage, batch.batch_id)
    started = time.perf_counter()
    try:
        manifest = work(started)
    except Exception as exc:
        seconds = time.perf_counter() - started
        expected = isinstance(exc, DriftloopError) and not isinstance(exc, TransientError)
        message = (
            str(exc)
            if expected
            else (
                f"unexpected {type(exc).__name__}: {exc} "
                "(retried on the next run; --verbose shows the traceback)"
            )
        )
        log.debug("%s %s failed", stage, batch.batch_id, exc_info=True)
        db.finish_run(key, stage, batch.batch_id, seconds, None, message, retry=not expected)
        return StageReport(stage, batch.batch_id, "failed", seconds, error=message, key=key)
    seconds = time.perf_counter() - started
    db.finish_run(key, stage, batch.batch_id, seconds, layout.relative(out_dir), None)
    return StageReport(stage, batch.batch_id, "ran", seconds, manifest, key=key)
