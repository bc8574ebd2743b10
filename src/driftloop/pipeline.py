"""One full pass over a project: ``driftloop run`` and ``make run-all``.

A pass ingests what landed and brings every stage's output up to date (prep, features, the
checks of new batches against the champion, training when the retrain policy says so); see
:mod:`driftloop.orchestration.loop`, which ``driftloop watch`` runs on every event.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.core.layout import Layout
from driftloop.orchestration.loop import RunResult, check_model_params_once, run_pass

if TYPE_CHECKING:
    import polars as pl

    from driftloop.orchestration.planner import Plan
    from driftloop.orchestration.runner import StageReport

__all__ = ["RunResult", "plan", "read_features", "run", "run_stage"]


def read_features(project: Path | str, batch_id: str) -> pl.LazyFrame:
    """The model columns of one batch (features are stored as a delta over processed rows),
    wherever the project's outputs live (its folder, or the spec's ``outputs:`` bucket)."""
    from driftloop.features import stage as features_stage

    return features_stage.read_features(Layout(Path(project)), batch_id)


def run(project: Path, *, wait: bool = True, quick: bool = True) -> RunResult:
    """Ingest new files and bring every batch's outputs, and the model, up to date.

    The pass holds the project's writer lease, like ``driftloop watch``: it refuses to run
    beside a watcher (which takes new files itself), and a watcher cannot start meanwhile.
    A project where nothing changed since a pass settled is answered first, without the
    lease (:func:`~driftloop.orchestration.settled.quick_settled`; ``quick=False``: the
    caller asked already).
    """
    from driftloop.core.spec import load_spec
    from driftloop.ingest.stage import IngestResult
    from driftloop.orchestration.lease import Lease
    from driftloop.orchestration.settled import quick_settled

    settled = quick_settled(project) if quick else None
    if settled is not None:  # nothing changed since a pass settled
        return RunResult(IngestResult(batch=None), unmatched=list(settled.unmatched))
    spec = load_spec(project)  # a broken spec or bad model params fail before any state
    if spec.model.enabled:
        check_model_params_once(spec, Layout(project))
    lease = Lease(Layout(project).state_db, url=spec.state.url)
    lease.acquire()
    try:
        return run_pass(project, wait=wait)
    finally:
        lease.release()


def plan(project: Path) -> Plan:
    """The stage calls a pass would make now (waves of independent calls), without making
    them: what an orchestrator runs, one ``driftloop stage`` call per entry."""
    from datetime import UTC, datetime

    from driftloop.core.spec import load_spec
    from driftloop.core.stage import Context
    from driftloop.core.state import StateDB
    from driftloop.orchestration import planner
    from driftloop.orchestration.facts import gather, trust_outputs
    from driftloop.orchestration.settled import CHECKED, recheck_due

    spec = load_spec(project)
    layout = Layout(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        ctx = Context(spec, layout, db)
        trust_outputs(ctx, due=recheck_due(db.fact(CHECKED), spec.ingest.recheck_seconds))
        return planner.plan(spec, gather(ctx), datetime.now(UTC))


def run_stage(
    project: Path,
    stage: str,
    *,
    batch_id: str | None = None,
    champion: str | None = None,
) -> StageReport:
    """One stage call (``driftloop stage NAME``): idempotent, so any worker may make it, and
    again: a call whose output is current is a cache hit."""
    from driftloop.core.outputs import one_view
    from driftloop.core.spec import load_spec
    from driftloop.core.stage import Context, StageCall
    from driftloop.core.state import StateDB
    from driftloop.orchestration.runner import run_call

    spec = load_spec(project)
    layout = Layout(project)
    with one_view(), StateDB(layout.state_db, url=spec.state.url) as db:
        return run_call(Context(spec, layout, db), StageCall(stage, batch_id, champion))
