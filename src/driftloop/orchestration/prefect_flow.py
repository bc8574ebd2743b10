"""The lifecycle as a Prefect 3 flow (the ``prefect`` extra), built from the pass planner.

One flow run is one pass, as :func:`driftloop.orchestration.loop.run_pass` makes it, with
every stage call a Prefect task:

1. ``begin``: the decisions the registry missed are applied, what a killed run left is put
   right, and complete new raw files are ingested (``DataArrived``);
2. then the planner's waves, asked for again until a plan is empty: prep and features of
   the batches that need them, all submitted at once with each batch's features after its
   prep (no barrier between the two waves: a worker free after one prep takes the next
   prep or a features call, never waits for the wave's slowest), the checks of new batches
   against the champion (one per batch too), the retrain policy's training
   (``RetrainRequested``) and the gate;
3. after each wave the events the state database logged go to Prefect's event bus
   (:mod:`driftloop.orchestration.prefect_events`).

Each task calls the stage's one idempotent entry point (:func:`~driftloop.orchestration.
runner.run_call`) in whatever process runs it, so Prefect may retry any task anywhere.
Retries follow driftloop's split: a call that failed on its data or spec
(:class:`StageFailedError`) is not retried; any other failure is (:class:`TransientStageError`,
a lost Dask worker, a dropped connection). Prefect's cache is keyed by the call's run key,
and consulted only while that key's output is committed, so an output withdrawn or deleted
is never taken for done.

With ``engine: dask`` in the spec the calls that fan out (prep, features and the checks, one
per batch) are submitted through ``prefect_dask.DaskTaskRunner`` on the session's cluster
(:mod:`driftloop.orchestration.engine`: a ``LocalCluster`` with the spec's workers and
threads, or the spec's ``address``): each is a Prefect task run executed by a Dask worker,
retries and cache included. The runner is made per flow run from the project's spec (a
deployment's flow is loaded by its entry point, so it cannot carry one cluster's settings),
and entered in the flow body; the flow's own task runner stays Prefect's thread pool, which
runs those calls with ``engine: local``. Ingest, training and the gate are called as
tasks in the flow's own process, one at a time, with every core of that machine.

Prefect is imported by this module only; nothing else in driftloop imports it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from driftloop.core.errors import DriftloopError, TransientError
from driftloop.core.layout import Layout, is_complete, sweep_temporaries
from driftloop.core.spec import Spec, load_spec
from driftloop.core.stage import Context, StageCall, Work
from driftloop.core.state import StateDB
from driftloop.orchestration import engine, planner, prefect_events, prefect_results
from driftloop.orchestration.facts import advance_watermark, gather
from driftloop.orchestration.reconcile import reconcile_runs, reconcile_versions
from driftloop.orchestration.runner import claimed, run_call, stage_def

log = logging.getLogger(__name__)

FLOW_NAME = "driftloop-lifecycle"
MAX_ROUNDS = 8  # plans asked for in one flow run, as a pass does (4 suffice)
RETRIES = 4  # a transient failure is tried this many more times by Prefect
RETRY_DELAYS = [1.0, 2.0, 4.0, 8.0]  # seconds, doubling, as the runner's backoff starts
FANNED_OUT = frozenset({"prep", "features", "monitor"})  # one call per batch: on the cluster


class TransientStageError(RuntimeError):
    """A stage call failed on something other than its data (retried)."""


class StageFailedError(RuntimeError):
    """A stage call failed on its data or spec: not retried until its key changes, or a
    user retries or dismisses it (``driftloop batches``)."""


def call_stage(project: str, call: dict[str, Any]) -> dict[str, Any]:
    """One stage call through the runner, in the process that runs it (the flow's, or a
    Dask worker's): the report as plain data, with where it ran. Raises
    :class:`StageFailedError` or :class:`TransientStageError` when it did not succeed."""
    path = Path(project)
    spec = load_spec(path)
    layout = Layout(path)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        report = run_call(Context(spec, layout, db), StageCall(**call))
        status = (db.run_info(report.key) or {}).get("status") if report.key else None
    where = f"{socket.gethostname()}:{os.getpid()}"
    found = {
        "stage": report.stage,
        "batch_id": report.batch_id,
        "outcome": report.outcome,
        "seconds": report.seconds,
        "key": report.key,
        "error": report.error,
        "worker": engine.worker_name() or where,
    }
    what = f"{report.stage} {report.batch_id}"
    if report.outcome in ("failed", "failed-earlier"):
        if status == "error":  # not on its data: the runner runs it again when asked
            raise TransientStageError(f"{what}: {report.error}")
        raise StageFailedError(f"{what}: {report.error}")
    if report.outcome == "waiting":  # another worker holds the unit: ask again shortly
        raise TransientStageError(f"{what}: waiting: {report.error}")
    return found


def _run_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's cache key: the call's run key, while that key's output is committed
    (None otherwise: Prefect then runs the task, and driftloop decides)."""
    path = Path(parameters["project"])
    call = StageCall(**parameters["call"])
    definition = stage_def(call.stage)
    if not definition.keyed:
        return None
    spec = load_spec(path)
    layout = Layout(path)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        work = definition.work(Context(spec, layout, db), call)
    if not isinstance(work, Work) or not is_complete(work.output):
        return None
    return f"driftloop-{spec.name}-{call.stage}-{work.key}"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries a task only when driftloop's runner would (its transient side)."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StageFailedError):
        return False
    return not (isinstance(exc, DriftloopError) and not isinstance(exc, TransientError))


@task(
    task_run_name="{label}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=_transient,
    cache_key_fn=_run_key,
    persist_result=True,
)
def stage_task(
    project: str, call: dict[str, Any], label: str, after: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A stage call: on the Dask cluster for the calls that fan out, here otherwise.
    ``after``: the result of the same batch's call it follows (its prep, for features),
    resolved by Prefect before this runs; when that one did not run or find its output
    (skipped, dismissed), this call is not made: ``blocked``, as the built-in loop does."""
    from prefect.logging import get_run_logger

    if after is not None and after["outcome"] not in ("ran", "cached"):
        return {**after, "stage": call["stage"], "outcome": "blocked", "seconds": 0.0}
    found = call_stage(project, call)  # where the task runs: a Dask worker, or here
    get_run_logger().info(
        "%s: %s on %s (%.2f s)", label, found["outcome"], found["worker"], found["seconds"]
    )
    return found


@task(task_run_name="begin", cache_policy=NO_CACHE)
def begin(project: str) -> dict[str, Any]:
    """What a pass does before it plans: the registry follows the decisions, what a killed
    run left is put right, and complete new files are ingested (one worker at a time)."""
    path = Path(project)
    spec = load_spec(path)
    layout = Layout(path)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        applied = []
        if spec.model.enabled:
            from driftloop.promotion.alias import apply_pending_decisions

            applied = apply_pending_decisions(spec, layout, db)
        for folder in layout.outputs:
            sweep_temporaries(folder)
        interrupted = reconcile_runs(db)
        if spec.model.enabled:
            reconcile_versions(
                spec, layout, db, train_interrupted=any(r["stage"] == "train" for r in interrupted)
            )
        with claimed(db, "ingest") as holder:
            batch = None
            if holder is None:
                batch = run_call(Context(spec, layout, db), StageCall("ingest")).manifest.get(
                    "batch_id"
                )
        prefect_events.relay(db, spec.name)
    return {"batch_id": batch, "applied": len(applied), "interrupted": len(interrupted)}


def _plan(project: str) -> planner.Plan:
    from datetime import UTC, datetime

    path = Path(project)
    spec = load_spec(path)
    layout = Layout(path)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        ctx = Context(spec, layout, db)
        facts = gather(ctx)
        found = planner.plan(spec, facts, datetime.now(UTC))
        if not found.waves:
            advance_watermark(ctx, facts)
        return found


def _retrain_requested(project: str, reason: str) -> None:
    from driftloop.orchestration.loop import _request_retrain

    path = Path(project)
    spec = load_spec(path)
    layout = Layout(path)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        _request_retrain(Context(spec, layout, db), reason)


def _relay(project: str) -> None:
    path = Path(project)
    spec = load_spec(path)
    with StateDB(Layout(path).state_db, url=spec.state.url) as db:
        prefect_events.relay(db, spec.name)


def _label(call: StageCall) -> str:
    return str(call)


@contextmanager
def _fan_out(spec: Spec) -> Iterator[Any]:
    """The task runner the calls that fan out are submitted to: ``DaskTaskRunner`` on the
    session's cluster with ``engine: dask`` (None: the flow's own)."""
    if spec.engine.name != "dask":
        yield None
        return
    from prefect_dask.task_runners import DaskTaskRunner

    # the cluster the session started (or the spec's scheduler); the session closes it
    with DaskTaskRunner(address=engine.scheduler_address()) as runner:
        yield runner


def _stretches(waves: list[list[StageCall]]) -> Iterator[list[list[StageCall]]]:
    """The plan's waves, consecutive fanned-out ones together (prep then features: submitted
    at once, each batch's calls chained), the others one at a time (training, the gate)."""
    run: list[list[StageCall]] = []
    for wave in waves:
        if wave and all(c.stage in FANNED_OUT for c in wave):
            run.append(wave)
            continue
        if run:
            yield run
            run = []
        yield [wave]
    if run:
        yield run


def _submit(
    runner: Any, project: str, todo: list[list[StageCall]], stage: Any = stage_task
) -> list[tuple[StageCall, Any]]:
    """The calls as task runs of ``stage`` (:data:`stage_task` with the project's result
    storage), every one submitted before any is waited for: the calls that
    fan out to ``runner`` (or the flow's own), each after the same batch's call in an
    earlier wave (features after its prep, passed as ``after``: Prefect, and with Dask the
    scheduler, start it when that one is done, with no barrier between the waves), so two
    workers are never left waiting for the slowest prep of a wave. Training and the gate
    are called here, one after another (every core is theirs)."""
    calls = [c for wave in todo for c in wave]
    if not all(c.stage in FANNED_OUT for c in calls):
        return [
            (c, _Done(stage(project, c.to_json(), _label(c), return_state=True))) for c in calls
        ]
    # batch by batch (its prep, then its features): Dask runs earlier submissions first,
    # so the batches finish one after another rather than all at the end
    by_batch: dict[str | None, list[StageCall]] = {}
    for c in calls:
        by_batch.setdefault(c.batch_id, []).append(c)
    submitted: list[tuple[StageCall, Any]] = []
    last: dict[str | None, Any] = {}
    for c in (c for group in by_batch.values() for c in group):
        after = last.get(c.batch_id)
        if runner is None:
            future = stage.submit(project, c.to_json(), _label(c), after)
        else:
            params = {"project": project, "call": c.to_json(), "label": _label(c)}
            future = runner.submit(stage, {**params, "after": after})
        last[c.batch_id] = future
        submitted.append((c, future))
    return submitted


class _Done:
    """A task called in the flow's process, seen as a future (its final state)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def wait(self) -> None:
        return None

    def result(self) -> Any:
        return self.state.result()


@flow(name=FLOW_NAME, log_prints=False)
def lifecycle(
    project: str,
    trigger_event: str | None = None,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """One pass of the lifecycle over ``project`` (the folder of its ``driftloop.yaml``).
    ``trigger_event`` / ``trigger_id``: the event that started this run (a deployment
    trigger fills them in), kept in the run's parameters and its result."""
    project = str(Path(project).resolve())
    spec = load_spec(Path(project))
    calls: list[dict[str, Any]] = []
    failed: list[str] = []
    # results (Prefect's cache records) where every worker sees them: beside S3 outputs
    stage = prefect_results.stored(stage_task, spec)
    with engine.session(spec.engine), _fan_out(spec) as runner:
        began = begin(project)
        done_or_failed: set[tuple[str, str | None]] = set()
        for _ in range(MAX_ROUNDS):
            plan = _plan(project)
            progressed = False
            blocked: set[str | None] = set()
            for stretch in _stretches(plan.waves):
                todo = [
                    [
                        c
                        for c in wave
                        if c.batch_id not in blocked and (c.stage, c.batch_id) not in done_or_failed
                    ]
                    for wave in stretch
                ]
                for c in (c for wave in todo for c in wave):
                    if c.reason is not None:
                        _retrain_requested(project, c.reason)
                for c, future in _submit(runner, project, todo, stage):
                    future.wait()
                    state = future.state
                    if state.is_completed():
                        result = future.result()
                        if result["outcome"] != "blocked":
                            calls.append(result)
                        progressed = progressed or result["outcome"] == "ran"
                        if result["outcome"] not in ("ran", "cached"):
                            blocked.add(c.batch_id)
                    elif state.is_pending():  # NotReady: the batch's earlier call failed
                        blocked.add(c.batch_id)
                    else:
                        why = str(state.message or state.name)
                        failed.append(f"{c}: {why}")
                        done_or_failed.add((c.stage, c.batch_id))
                        blocked.add(c.batch_id)
                _relay(project)
            if not progressed:
                break
    summary = {
        "trigger": {"event": trigger_event, "id": trigger_id},
        "ingested": began["batch_id"],
        "calls": calls,
        "failed": failed,
    }
    prefect_events.flush()  # before this process may end (a served run is a subprocess)
    if failed:
        raise StageFailedError(
            f"{len(failed)} stage call(s) failed: {'; '.join(failed)} "
            "(driftloop batches lists them, with retry and dismiss)"
        )
    return summary
