"""The one runner of stage calls: the stage registry, cache hits, retries with backoff, and
the stage-run record.

Every way of running a stage goes through :func:`run_call`: the built-in loop, the
``driftloop stage`` command and (next) an orchestrator's task. A stage says what a call
would do (:class:`~driftloop.core.stage.Work`: a run key and an output); the runner runs it
unless that key already succeeded (a cache hit) or failed on its data, and records the run
with its events. Stages are imported when first called, so a pass with nothing to do
imports none of them.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from driftloop.core.errors import DriftloopError, SpecError, TransientError
from driftloop.core.layout import Layout, is_complete, read_manifest
from driftloop.core.spec import did_you_mean
from driftloop.core.stage import Context, Skip, StageCall, StageDef, Work
from driftloop.core.state import StateDB

log = logging.getLogger(__name__)

Outcome = Literal["ran", "cached", "failed", "failed-earlier", "waiting"]
MAX_ATTEMPTS = 12  # a transient failure is tried this many times in all (about 20 minutes)
BACKOFF_SECONDS = (1.0, 300.0)  # the first wait, and the longest

# name -> the module whose STAGE it is (imported on first use)
STAGES: dict[str, str] = {
    "ingest": "driftloop.ingest.stage",
    "prep": "driftloop.prep.stage",
    "features": "driftloop.features.stage",
    "monitor": "driftloop.monitoring.stage",
    "train": "driftloop.train.stage",
}


@dataclass
class StageReport:
    stage: str
    batch_id: str
    outcome: Outcome
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def stage_def(name: str) -> StageDef:
    """A registered stage by name; an unknown name is an error with a did-you-mean hint."""
    if name not in STAGES:
        raise SpecError(
            f"there is no stage {name!r}{did_you_mean(name, list(STAGES))} (the stages: "
            f"{', '.join(STAGES)})"
        )
    found: StageDef = importlib.import_module(STAGES[name]).STAGE
    return found


def run_call(ctx: Context, call: StageCall, *, backoff: bool = False) -> StageReport:
    """Run one stage call, idempotently (see the module docstring)."""
    definition = stage_def(call.stage)
    if definition.per_batch and call.batch_id is None:
        raise SpecError(f"stage {call.stage!r} works on one batch: name it (--batch BATCH_ID)")
    work = definition.work(ctx, call)
    if isinstance(work, Skip):
        return StageReport(call.stage, work.batch_id, "failed-earlier", error=work.why)
    if not definition.keyed:
        started = time.perf_counter()
        manifest = work.run(started)
        seconds = time.perf_counter() - started
        outcome: Outcome = "ran" if manifest.get("batch_id") else "cached"
        return StageReport(call.stage, manifest.get("batch_id") or "-", outcome, seconds, manifest)
    return keyed_run(ctx.db, ctx.layout, call.stage, work, backoff=backoff)


def _cached(db: StateDB, work: Work) -> bool:
    return (
        db.succeeded(work.key)
        and is_complete(work.output)
        and read_manifest(work.output).get("run_key") == work.key
    )


def is_current(ctx: Context, work: Work | Skip) -> bool:
    """The call's output is committed and was made by this very key (a run would be a cache
    hit)."""
    return isinstance(work, Work) and _cached(ctx.db, work)


def keyed_run(
    db: StateDB, layout: Layout, stage: str, work: Work, *, backoff: bool = False
) -> StageReport:
    """Run ``work`` unless its key already succeeded (cache hit) or failed on its data.

    A DriftloopError is a failure of the data or spec: recorded and not retried until the
    key changes. Any other exception is recorded as an error and retried on the next pass;
    with ``backoff`` (the event loop) only once a wait that doubles with each attempt has
    passed (1 s, 2 s, 4 s, ... up to 5 minutes), and not after ``MAX_ATTEMPTS``.
    """
    key, batch_id = work.key, work.batch_id
    if _cached(db, work):
        return StageReport(stage, batch_id, "cached", manifest=read_manifest(work.output))
    info = db.run_info(key) or {}
    if info.get("status") == "failed":
        return StageReport(stage, batch_id, "failed-earlier", error=info["error"])
    if info.get("status") == "error" and backoff:
        attempts = int(info["attempts"])
        if attempts >= MAX_ATTEMPTS:
            why = f"gave up after {attempts} attempts; the last: {info['error']}"
            return StageReport(stage, batch_id, "failed-earlier", error=why)
        first, longest = BACKOFF_SECONDS
        wait = min(longest, first * 2 ** (attempts - 1))
        finished = datetime.fromisoformat(info["finished_at"])
        if (datetime.now(UTC) - finished).total_seconds() < wait:
            return StageReport(stage, batch_id, "waiting", error=info["error"])
    db.start_run(key, stage, batch_id)
    started = time.perf_counter()
    try:
        manifest = work.run(started)
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
        log.debug("%s %s failed", stage, batch_id, exc_info=True)
        db.finish_run(key, stage, batch_id, seconds, None, message, retry=not expected)
        return StageReport(stage, batch_id, "failed", seconds, error=message)
    seconds = time.perf_counter() - started
    db.finish_run(key, stage, batch_id, seconds, layout.relative(work.output), None)
    return StageReport(stage, batch_id, "ran", seconds, manifest)
