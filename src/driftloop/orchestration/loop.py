"""One pass of the loop: bring every stage's output up to date with what has landed.

``driftloop run`` (and ``make run-all``) is one pass; ``driftloop watch`` makes a pass
whenever a file lands or a timer fires. A pass:

1. applies promotion decisions the registry missed (a crash between recording a decision
   and moving the alias);
2. ingests complete new raw files (``DataArrived``, stored with the ledger in one
   transaction);
3. prepares and builds features for every batch whose output is missing or stale (keyed
   runs: a second pass is all cache hits);
4. checks each batch that arrived since the last training against the champion (drift, and
   realized performance from its labels), once per batch and champion;
5. asks the retrain policy whether a training is due, records ``RetrainRequested`` with the
   reason, and trains; then the promote stage runs the promotion gate on the newest training
   not decided yet (a cache hit when there is none), which decides whether it serves.

What a pass does is decided by the planner (:mod:`driftloop.orchestration.planner`) from the
project's facts, and every call goes through the one runner
(:func:`driftloop.orchestration.runner.run_call`); this module executes the plan, waves in
order, and asks again until nothing is left to do. Every step is idempotent, so a pass
interrupted anywhere (even by ``kill -9``) is finished by the next one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.core.layout import Layout, sweep_temporaries
from driftloop.core.outputs import one_view
from driftloop.core.spec import Spec, load_spec
from driftloop.core.stage import Context
from driftloop.core.state import Batch, StateDB, state_exists
from driftloop.core.storage import candidate_files, placement, unmatched_files
from driftloop.ingest.stage import IngestResult, ingest
from driftloop.orchestration import planner, settled
from driftloop.orchestration.facts import (
    advance_watermark,
    gather,
    record_outputs_seen,
    trust_outputs,
)
from driftloop.orchestration.reconcile import reconcile_runs, reconcile_versions
from driftloop.orchestration.runner import StageReport, claimed, run_call

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    ingest: IngestResult
    reports: list[StageReport] = field(default_factory=list)
    retrain: str | None = None  # why a training was requested in this pass
    waiting: str | None = None  # why new data did not train (the policy said not yet)
    applied: list[dict[str, Any]] = field(default_factory=list)  # decisions re-applied
    busy_elsewhere: str | None = None  # another worker was ingesting (its holder)
    # files in a source's folder that no source's glob matches: {path, source, pattern}
    unmatched: list[dict[str, str]] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)  # what a killed process left, put right

    @property
    def pending(self) -> bool:
        """Work this pass could not do yet and a later one will: a file still being written,
        a unit another worker runs, a retry waiting for its backoff."""
        return (
            bool(self.ingest.still_writing)
            or self.busy_elsewhere is not None
            or any(r.outcome == "waiting" for r in self.reports)
        )

    @property
    def failed(self) -> list[StageReport]:
        return [r for r in self.reports if r.outcome == "failed"]

    @property
    def unresolved(self) -> list[StageReport]:
        """Failures that stay until fixed, retried or dismissed (``driftloop batches``):
        the ones of this pass and the earlier ones it met again."""
        return [r for r in self.reports if r.outcome in ("failed", "failed-earlier")]

    @property
    def progressed(self) -> bool:
        """Something new happened (a batch, a stage that ran or failed just now); a stage
        that failed earlier and is unchanged does not count."""
        return self.ingest.batch is not None or any(
            r.outcome in ("ran", "failed") for r in self.reports
        )

    @property
    def did_work(self) -> bool:
        """Anything ingested, run or failed in this pass (cache hits do not count)."""
        active = ("ran", "failed", "failed-earlier")
        return any(r.outcome in active for r in self.reports) or self.ingest.batch is not None


def run_pass(
    project: Path,
    *,
    wait: bool = True,
    backoff: bool = False,
    now: datetime | None = None,
    complete: dict[str, tuple[int, int]] | None = None,
) -> RunResult:
    """One pass over the project (see the module docstring). ``complete``: raw files the
    caller saw finished (see :func:`driftloop.ingest.stage.ingest`). Within a pass, each
    committed output's marker is asked for once (:func:`driftloop.core.outputs.one_view`)."""
    with one_view():
        return _run_pass(project, wait=wait, backoff=backoff, now=now, complete=complete)


def _run_pass(
    project: Path,
    *,
    wait: bool,
    backoff: bool,
    now: datetime | None,
    complete: dict[str, tuple[int, int]] | None,
) -> RunResult:
    layout = Layout(project)
    spec = load_spec(project)
    checked = check_model_params_once(spec, layout) if spec.model.enabled else None
    with StateDB(layout.state_db, url=spec.state.url) as db:
        if checked is not None:
            db.record_fact(MODEL_PARAMS_FACT, checked)
        applied = []
        if spec.model.enabled:
            from driftloop.promotion.alias import apply_pending_decisions

            applied = apply_pending_decisions(spec, layout, db)  # first: the alias follows the log
        # the sources' files, once for the whole pass: between rechecks, the files the ledger
        # took are known by its record of them (no stat each; see orchestration/settled.py)
        checked_at = time.time()
        plain = settled.plain_names(settled.Basis.of(spec, layout), layout)  # before listing
        due = settled.recheck_due(db.fact(settled.CHECKED), spec.ingest.recheck_seconds)
        taken_before = db.ingested_sightings()
        known = None if due else trusted_identities(taken_before, complete)
        listed = candidate_files(spec, layout, known=known)
        unmatched = unmatched_files(spec, layout, listed)
        ctx = Context(spec, layout, db, now=now)
        outputs_trusted = trust_outputs(ctx, due=due)  # else each is checked: a recheck
        if (
            not applied
            and outputs_trusted
            and db.fact(settled.FACT) == settled.current(spec, layout, db, listed, unmatched, plain)
        ):
            # nothing changed since a pass settled
            if due:  # every identity as recorded: a clean recheck
                db.record_fact(settled.CHECKED, repr(checked_at))
            return RunResult(IngestResult(batch=None), unmatched=unmatched)
        for folder in layout.outputs:
            sweep_temporaries(folder)  # what a killed run left (it changed the fingerprint)
        # and its records: runs left "running", versions left undecided
        interrupted = reconcile_runs(db)
        reconciled = [f"{r['stage']} {r['batch_id']}: {r['error']}" for r in interrupted]
        if spec.model.enabled:
            reconciled += [
                f"{d['model']} v{d['version']}: rejected: {d['reason']}"
                for d in reconcile_versions(
                    spec,
                    layout,
                    db,
                    train_interrupted=any(r["stage"] == "train" for r in interrupted),
                )
            ]
        with claimed(db, "ingest") as holder:  # one worker forms a batch at a time
            found = IngestResult(batch=None)
            if holder is None:
                found = ingest(
                    spec,
                    layout,
                    db,
                    wait=wait,
                    complete=complete,
                    listed_files=listed,
                    taken_before=taken_before,
                )
        result = RunResult(
            found,
            applied=applied,
            busy_elsewhere=holder,
            unmatched=unmatched,
            reconciled=reconciled,
        )
        ctx.memo["placement"] = placement(listed)
        for _ in range(MAX_ROUNDS):
            facts = gather(ctx)
            plan = planner.plan(spec, facts, now or datetime.now(UTC))
            result.waiting = plan.waiting
            if not execute(ctx, plan, result, backoff=backoff):
                break
        advance_watermark(ctx, facts)  # the last plan's facts: after the work it followed
        record_outputs_seen(ctx)
        clean = not (found.changed or found.unreadable)
        if due and holder is None and clean:  # a clean recheck: the next passes can trust
            db.record_fact(settled.CHECKED, repr(checked_at))
        elif not clean:  # (a watcher is told of a write) every pass checks until it is fixed
            db.record_fact(settled.CHECKED, "0")
        if not plan.waves and _settles(result) and not settled.time_sensitive(spec, plan.waiting):
            # what this pass saw of the sources (a file landing since changes the next one's)
            fact = settled.current(spec, layout, db, listed, unmatched, plain)
            db.record_fact(settled.FACT, fact)
    return result


def trusted_identities(
    taken: set[tuple[str, int, int]], complete: Mapping[str, tuple[int, int]] | None
) -> dict[str, tuple[int, int]]:
    """Key -> (size, mtime_ns) of the files the ledger took, as last seen (the latest, where a
    file was seen more than once), but the ones a watcher was told were written again."""
    # the latest of a key's sightings last (a dict keeps the last value given for a key)
    known = {key: (size, mtime_ns) for key, size, mtime_ns in sorted(taken, key=_mtime)}
    for key in complete or ():
        known.pop(key, None)
    return known


def _mtime(sighting: tuple[str, int, int]) -> int:
    return sighting[2]


def _settles(result: RunResult) -> bool:
    """The pass ended with nothing pending, nothing failed (a failure is reported again by
    every pass until it is fixed) and no file unreadable or changed in place (reported by
    every pass until it is back or gone)."""
    return not (
        result.pending
        or any(r.outcome in ("failed", "failed-earlier") for r in result.reports)
        or result.ingest.unreadable
        or result.ingest.changed
    )


MAX_ROUNDS = 8  # plans asked for in one pass (data, checks, training, the gate: 4 suffice)


MODEL_PARAMS_FACT = "model_params_checked"


def check_model_params_once(spec: Spec, layout: Layout) -> str:
    """Validate the model params with scikit-learn (importing it takes seconds) unless this
    project already did for the same model and task sections and the same scikit-learn
    installation; returns that fingerprint, for the state database."""
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    origin = found.origin if found is not None and found.origin else ""
    installed = os.stat(origin).st_mtime_ns if origin else 0  # noqa: PTH116
    fingerprint = f"{spec.section_hash('model', 'task')}:{origin}:{installed}"
    if state_exists(layout.state_db, spec.state.url):  # it ran before (nothing is made here)
        with StateDB(layout.state_db, url=spec.state.url) as db:
            if db.fact(MODEL_PARAMS_FACT) == fingerprint:
                return fingerprint
    from driftloop.train.fit import check_model_params

    check_model_params(spec)
    return fingerprint


def execute(ctx: Context, plan: planner.Plan, result: RunResult, *, backoff: bool) -> bool:
    """Run a plan's waves in order; a batch whose call did not succeed gets no later call
    in this plan. True if any call ran (the facts changed: plan again)."""
    progressed = False
    blocked: set[str | None] = set()
    # a call that failed earlier in this pass waits for the next pass (a later plan of the
    # same pass may list it again: an errored check is retried)
    failed = {(r.stage, r.batch_id) for r in result.reports if r.outcome == "failed"}
    for wave in plan.waves:
        for call in wave:
            if call.batch_id in blocked or (call.stage, call.batch_id or "-") in failed:
                continue
            if call.reason is not None:
                _request_retrain(ctx, call.reason)
                result.retrain = call.reason
            report = run_call(ctx, call, backoff=backoff)
            result.reports.append(report)
            progressed = progressed or report.outcome == "ran"
            if report.outcome not in ("ran", "cached"):
                blocked.add(call.batch_id)
    return progressed


def _request_retrain(ctx: Context, reason: str) -> None:
    """``RetrainRequested``, once per training key."""
    from driftloop.core.events import RetrainRequested
    from driftloop.train.stage import train_plan

    plan = train_plan(ctx.spec, ctx.layout, ctx.db)
    if plan is None:
        return
    requested = ctx.db.last_event("RetrainRequested")
    if requested is None or requested.get("key") != plan.key:
        new_ids = [b["batch_id"] for b in plan.lineage if not _trained(ctx, b["batch_id"])]
        ctx.db.record(RetrainRequested(reason=reason, key=plan.key, new_batches=new_ids))


def _trained(ctx: Context, batch_id: str) -> bool:
    from driftloop.train.stage import last_training

    last = last_training(ctx.layout, ctx.db)
    return last is not None and batch_id in {m["batch_id"] for m in last["inputs"]}


def new_batches(
    layout: Layout, db: StateDB, batches: list[Batch] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Batches with features that the last successful training did not see, and its manifest
    (``batches``: the caller's read of the state database's batches, if it has one)."""
    from driftloop.train.stage import feature_batches, last_training

    last = last_training(layout, db)
    seen = {m["batch_id"] for m in last["inputs"]} if last else set()
    # the published keys: no manifest read per batch (10,000s of batches)
    current = {("features", b): key for b, key in db.current_keys_of("features").items()}
    found = feature_batches(layout, db, current=current, batches=batches)
    return [b for b in found if b["batch_id"] not in seen], last


def work(project: Path, *, until_idle: bool, interval: float, stop: threading.Event) -> int:
    """``driftloop work``: one of several workers on a project whose state database they
    share (PostgreSQL). No project lease: ingest and every stage call are claimed per unit,
    so workers never run the same unit at once, and the run keys make every call idempotent.
    Passes until ``stop`` is set, or with ``until_idle`` until one finds nothing to do;
    returns the number of passes made."""
    passes = 0
    while not stop.is_set():
        result = run_pass(project, wait=False, backoff=True)
        passes += 1
        idle = not result.reports and result.ingest.batch is None
        if until_idle and idle and not result.pending:
            return passes
        stop.wait(interval if idle else 0.0)
    return passes
