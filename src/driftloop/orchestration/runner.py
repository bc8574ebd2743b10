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
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from driftloop.core.errors import (
    DriftloopError,
    SpecError,
    TransientError,
    disk_full,
    is_disk_full,
)
from driftloop.core.layout import Layout, Output, is_complete, read_manifest
from driftloop.core.procs import pid_alive
from driftloop.core.redact import redact
from driftloop.core.spec import did_you_mean
from driftloop.core.stage import Context, Skip, StageCall, StageDef, Work
from driftloop.core.state import StateDB

log = logging.getLogger(__name__)

Outcome = Literal["ran", "cached", "failed", "failed-earlier", "waiting", "skipped", "dismissed"]
MAX_ATTEMPTS = 12  # a transient failure is tried this many times in all (about 20 minutes)
CLAIM_SECONDS = 30.0  # a unit's claim, renewed every third of it while the call runs
# This process, as a claimant: another worker (another process, here or elsewhere) sees it
HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
BACKOFF_SECONDS = (1.0, 300.0)  # the first wait, and the longest

# name -> the module whose STAGE it is (imported on first use)
STAGES: dict[str, str] = {
    "ingest": "driftloop.ingest.stage",
    "prep": "driftloop.prep.stage",
    "features": "driftloop.features.stage",
    "monitor": "driftloop.monitoring.stage",
    "train": "driftloop.train.stage",
    "promote": "driftloop.promotion.stage",
}


class StageReport:
    """What one stage call did; a cache hit's manifest is read when first used."""

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
        manifest_dir: Output | None = None,
        retry: bool = False,
    ) -> None:
        self.stage, self.batch_id, self.outcome = stage, batch_id, outcome
        self.retry = retry  # a failure that is not the data's: the next pass runs it again
        self.seconds, self.error, self.key = seconds, error, key
        self._manifest, self._manifest_dir = manifest, manifest_dir

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            d = self._manifest_dir
            self._manifest = read_manifest(d) if d is not None and is_complete(d) else {}
        return self._manifest

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "batch_id": self.batch_id,
            "outcome": self.outcome,
            "seconds": self.seconds,
            "error": self.error,
            "key": self.key,
            "retry": self.retry,
            "manifest": self.manifest,
        }

    def __repr__(self) -> str:
        return (
            f"StageReport(stage={self.stage!r}, batch_id={self.batch_id!r}, "
            f"outcome={self.outcome!r}, seconds={self.seconds!r}, error={self.error!r})"
        )


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
        return StageReport(call.stage, work.batch_id, "skipped", error=work.why)
    if not definition.keyed:  # ingest: the ledger makes it idempotent
        started = time.perf_counter()
        manifest = work.run(started)
        seconds = time.perf_counter() - started
        outcome: Outcome = "ran" if manifest.get("batch_id") else "cached"
        return StageReport(call.stage, manifest.get("batch_id") or "-", outcome, seconds, manifest)
    current = ctx.current()
    report = keyed_run(
        ctx.db, ctx.layout, call.stage, work, backoff=backoff, current=current, unit=call.unit
    )
    # keep the published keys read once per pass as the state database now has them
    if report.outcome in ("ran", "cached"):
        current[(call.stage, work.batch_id)] = work.key
    elif report.outcome == "failed":  # a run started and did not succeed
        current.pop((call.stage, work.batch_id), None)
    if report.outcome != "cached":
        for name in ("failures", "dismissed"):
            ctx.forget(name)  # a run started: the failures in the way changed
        ran(ctx)[call.stage] += 1
    return report


def ran(ctx: Context) -> Counter[str]:
    """How many calls of each stage started a run in this pass: what a pass read once stays
    good until a stage that changes it ran (``ctx.once(f"x:{ran(ctx)['monitor']}", ...)``)."""
    found: Counter[str] = ctx.once("ran", Counter)
    return found


def _cached(
    db: StateDB, stage: str, work: Work, current: Mapping[tuple[str, str], str] | None
) -> bool:
    """The output is committed and was made by this very key. With ``current`` (the state
    database's published keys, read once per pass) no manifest is opened; a hit found the
    slow way is recorded there, so the next pass takes the fast way."""
    if current is not None and current.get((stage, work.batch_id)) == work.key:
        return is_complete(work.output)
    hit = (
        db.succeeded(work.key)
        and is_complete(work.output)
        and read_manifest(work.output).get("run_key") == work.key
    )
    if hit and current is not None:
        db.adopt_current(stage, work.batch_id, work.key)
    return hit


def is_current(ctx: Context, stage: str, work: Work | Skip) -> bool:
    """The call's output is current: a run would be a cache hit."""
    current = ctx.current()
    return isinstance(work, Work) and _cached(ctx.db, stage, work, current)


def keyed_run(
    db: StateDB,
    layout: Layout,
    stage: str,
    work: Work,
    *,
    backoff: bool = False,
    current: Mapping[tuple[str, str], str] | None = None,
    unit: str | None = None,
) -> StageReport:
    """Run ``work`` unless its key already succeeded (cache hit) or failed on its data.

    A DriftloopError is a failure of the data or spec: recorded and not retried until the
    key changes (or a user asks: ``driftloop batches retry``; one dismissed is reported as
    such). Any other exception is recorded as an error and retried on the next pass;
    with ``backoff`` (the event loop) only once a wait that doubles with each attempt has
    passed (1 s, 2 s, 4 s, ... up to 5 minutes), and not after ``MAX_ATTEMPTS``.
    """
    key, batch_id = work.key, work.batch_id
    if _cached(db, stage, work, current):
        return StageReport(stage, batch_id, "cached", key=key, manifest_dir=work.output)
    info = db.run_info(key) or {}
    if info.get("status") == "failed":
        return StageReport(stage, batch_id, "failed-earlier", error=info["error"], key=key)
    if info.get("status") == "dismissed":  # a user accepted it ('driftloop batches dismiss')
        return StageReport(stage, batch_id, "dismissed", error=info["error"], key=key)
    if info.get("status") == "error" and backoff:
        attempts = int(info["attempts"])
        if attempts >= MAX_ATTEMPTS:
            why = f"gave up after {attempts} attempts; the last: {info['error']}"
            return StageReport(stage, batch_id, "failed-earlier", error=why, key=key)
        first, longest = BACKOFF_SECONDS
        wait = min(longest, first * 2 ** (attempts - 1))
        finished = datetime.fromisoformat(info["finished_at"])
        if (datetime.now(UTC) - finished).total_seconds() < wait:
            return StageReport(stage, batch_id, "waiting", error=info["error"])
    with claimed(db, unit or f"{stage}:{batch_id}") as holder:
        if holder is not None:  # another worker runs this unit now: its result will do
            why = f"another worker runs it ({holder})"
            return StageReport(stage, batch_id, "waiting", error=why)
        if _cached(db, stage, work, None):  # finished by another worker meanwhile
            return StageReport(stage, batch_id, "cached", key=key, manifest_dir=work.output)
        return _run(db, layout, stage, work)


def _run(db: StateDB, layout: Layout, stage: str, work: Work) -> StageReport:
    key, batch_id = work.key, work.batch_id
    db.start_run(key, stage, batch_id)
    started = time.perf_counter()
    try:
        manifest = work.run(started)
    except Exception as exc:
        seconds = time.perf_counter() - started
        expected = isinstance(exc, DriftloopError) and not isinstance(exc, TransientError)
        message = redact(  # a third party's error may quote a URI with its password
            str(exc)
            if expected or isinstance(exc, TransientError)  # its message says it is retried
            else str(disk_full(f"{stage} {batch_id}", exc))
            if is_disk_full(exc)
            else (
                f"unexpected {type(exc).__name__}: {exc} "
                "(retried on the next run; --verbose shows the traceback)"
            )
        )
        log.debug("%s %s failed", stage, batch_id, exc_info=True)
        db.finish_run(key, stage, batch_id, seconds, None, message, retry=not expected)
        return StageReport(
            stage, batch_id, "failed", seconds, error=message, key=key, retry=not expected
        )
    seconds = time.perf_counter() - started
    db.finish_run(key, stage, batch_id, seconds, layout.relative(work.output), None)
    return StageReport(stage, batch_id, "ran", seconds, manifest, key=key)


def _claim(db: StateDB, unit: str) -> bool:
    """Claim ``unit``; a claim whose holder was a process on this machine that is gone
    (killed) is taken over at once instead of waiting for it to expire."""
    if db.claim(unit, HOLDER, seconds=CLAIM_SECONDS, now=time.time()):
        return True
    found = db.claimant(unit, now=time.time())
    if found is None:
        return db.claim(unit, HOLDER, seconds=CLAIM_SECONDS, now=time.time())
    host, _, rest = found.holder.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        db.release(unit, found.holder)  # only that holder's claim, if it is still its
        return db.claim(unit, HOLDER, seconds=CLAIM_SECONDS, now=time.time())
    return False


@contextmanager
def claimed(db: StateDB, unit: str) -> Iterator[str | None]:
    """Claim ``unit`` for this process while the block runs (renewed by a thread, released
    after); yields None when it is ours, else who holds it. Claims only keep two workers
    from doing the same work at once; run keys and committed outputs decide what is done."""
    if not _claim(db, unit):
        found = db.claimant(unit, now=time.time())
        yield found.holder if found is not None else "a worker that just finished"
        return
    stop = threading.Event()

    def renew() -> None:
        with StateDB(db.path, url=db.url) as own:  # a connection of this thread's own
            while not stop.wait(CLAIM_SECONDS / 3):
                own.renew(unit, HOLDER, seconds=CLAIM_SECONDS, now=time.time())

    renewer = threading.Thread(target=renew, name=f"claim {unit}", daemon=True)
    renewer.start()
    try:
        yield None
    finally:
        stop.set()
        renewer.join()
        db.release(unit, HOLDER)
