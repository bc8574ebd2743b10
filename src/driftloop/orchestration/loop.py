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

Every step is idempotent, so a pass interrupted anywhere (even by ``kill -9``) is finished
by the next one. Stages never import each other; this module wires them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.core.layout import (
    Layout,
    is_complete,
    read_manifest,
    sweep_temporaries,
)
from driftloop.core.runner import StageReport, keyed_run, run_key
from driftloop.core.spec import Spec, load_spec
from driftloop.core.state import StateDB
from driftloop.features.stage import features_stage
from driftloop.ingest.stage import IngestResult, ingest
from driftloop.monitoring.stage import MONITOR_SECTIONS, MONITOR_VERSION, check_batch
from driftloop.prep.stage import prep_stage

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    ingest: IngestResult
    reports: list[StageReport] = field(default_factory=list)
    retrain: str | None = None  # why a training was requested in this pass
    waiting: str | None = None  # why new data did not train (the policy said not yet)
    applied: list[dict[str, Any]] = field(default_factory=list)  # decisions re-applied

    @property
    def failed(self) -> list[StageReport]:
        return [r for r in self.reports if r.outcome == "failed"]

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
    caller saw finished (see :func:`driftloop.ingest.stage.ingest`)."""
    layout = Layout(project)
    spec = load_spec(project)
    if spec.model.enabled:
        from driftloop.train.fit import check_model_params

        check_model_params(spec)
    for folder in (
        layout.processed,
        layout.features,
        layout.quarantine,
        layout.monitoring / "batches",
        layout.root / "data" / "models",
    ):
        sweep_temporaries(folder)
    with StateDB(layout.state_db) as db:
        applied = []
        if spec.model.enabled:
            from driftloop.promotion.alias import apply_pending_decisions

            applied = apply_pending_decisions(spec, layout, db)  # first: the alias follows the log
        result = RunResult(ingest(spec, layout, db, wait=wait, complete=complete), applied=applied)
        for batch in db.batches():
            prep = prep_stage(spec, layout, db, batch, backoff=backoff)
            result.reports.append(prep)
            if prep.outcome in ("ran", "cached"):
                result.reports.append(features_stage(spec, layout, db, batch, backoff=backoff))
        if spec.model.enabled:
            _model_steps(spec, layout, db, result, now=now, backoff=backoff)
    return result


@dataclass(frozen=True)
class _Facts:
    """What the model steps of one pass decide on, read once (every batch's features
    manifest, the last training's manifest)."""

    plan: Any  # lifecycle.TrainPlan, or None without features
    last: dict[str, Any] | None  # the last successful training's manifest
    new: list[dict[str, Any]]  # batches with features that training did not see
    champion: str | None


def _model_steps(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    result: RunResult,
    *,
    now: datetime | None,
    backoff: bool,
) -> None:
    """Check the new batches against the champion and train when the policy says so.

    The check comes first when its verdict can decide the training; when the policy trains
    anyway (every N batches, say), training comes first and the check follows, against the
    champion the batches arrived under, so a new model is not kept waiting for a report.
    """
    from driftloop.train.stage import last_training, train_plan

    plan = train_plan(spec, layout, db)
    if plan is None:
        return
    last = last_training(layout, db)
    seen = {m["batch_id"] for m in last["inputs"]} if last else set()
    facts = _Facts(
        plan,
        last,
        [b for b in plan.lineage if b["batch_id"] not in seen],
        recorded_champion(db, spec.name),
    )
    moment = now or datetime.now(UTC)
    if _reason(spec, layout, db, facts, moment, signals=False) is not None:
        _train_if_due(spec, layout, db, result, facts, now=moment, backoff=backoff)
        _promote(spec, layout, db, result, backoff=backoff)
        _monitor_new_batches(spec, layout, db, result, facts, now=now, backoff=backoff)
    else:
        _monitor_new_batches(spec, layout, db, result, facts, now=now, backoff=backoff)
        _train_if_due(spec, layout, db, result, facts, now=moment, backoff=backoff)
        _promote(spec, layout, db, result, backoff=backoff)


def recorded_champion(db: StateDB, model: str) -> str | None:
    """The champion the decisions in the state database name (the registry follows them)."""
    found = [d for d in db.decisions(model, effective=True) if d["decision"] != "rejected"]
    return str(found[-1]["version"]) if found else None


def new_batches(layout: Layout, db: StateDB) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Batches with features that the last successful training did not see, and its manifest."""
    from driftloop.train.stage import feature_batches, last_training

    last = last_training(layout, db)
    seen = {m["batch_id"] for m in last["inputs"]} if last else set()
    return [b for b in feature_batches(layout, db) if b["batch_id"] not in seen], last


def _monitor_new_batches(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    result: RunResult,
    facts: _Facts,
    *,
    now: datetime | None,
    backoff: bool,
) -> None:
    """Each batch the champion has not learned from, checked against it once."""
    champion = facts.champion
    if not spec.monitoring.on_new_data or champion is None:
        return
    batches = {b.batch_id: b for b in db.batches()}
    for item in facts.new:
        batch = batches[item["batch_id"]]
        if read_manifest(layout.features / batch.batch_id).get("rows", 1) == 0:
            continue  # a batch that only updated a joined source has no rows to check
        key = run_key(
            "monitor",
            MONITOR_VERSION,
            spec.section_hash(*MONITOR_SECTIONS),
            [item["features_run_key"], f"champion={champion}"],
        )
        out_dir = layout.monitoring / "batches" / batch.batch_id

        def work(started: float, batch_id: str = batch.batch_id, key: str = key) -> dict[str, Any]:
            return check_batch(layout, batch_id, key, now, champion)

        report = keyed_run(db, layout, "monitor", batch, key, out_dir, work, backoff=backoff)
        result.reports.append(report)


def _signals(layout: Layout, new: list[dict[str, Any]]) -> tuple[bool, bool]:
    """(drift, decay) found by the checks of the new batches."""
    drift = decay = False
    for item in new:
        out_dir = layout.monitoring / "batches" / item["batch_id"]
        if is_complete(out_dir):
            summary = read_manifest(out_dir)["summary"]
            drift = drift or bool(summary["drift_detected"])
            decay = decay or bool(summary["performance_degraded"])
    return drift, decay


def _train_if_due(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    result: RunResult,
    facts: _Facts,
    *,
    now: datetime,
    backoff: bool,
) -> None:
    from driftloop.train.stage import train_stage

    plan = facts.plan
    spec_text = layout.spec.read_text(encoding="utf-8")
    info = db.run_info(plan.key)
    if info is not None and info["status"] in ("succeeded", "failed"):
        # Trained on exactly this data and spec already (or it cannot be): what it was.
        report = train_stage(spec, layout, db, spec_text, plan=plan, backoff=backoff)
        if report is not None:
            result.reports.append(report)
        return
    reason = _reason(spec, layout, db, facts, now, signals=True)
    if reason is None:
        if facts.new:
            result.waiting = (
                f"{len(facts.new)} new batch(es) since the last training; the retrain policy "
                f"waits (every_batches {spec.retrain.every_batches}, no drift or decay found)"
            )
        return
    requested = db.last_event("RetrainRequested")
    if requested is None or requested.get("key") != plan.key:
        new_ids = [b["batch_id"] for b in facts.new]
        db.record_event(
            "RetrainRequested", {"reason": reason, "key": plan.key, "new_batches": new_ids}
        )
    result.retrain = reason
    report = train_stage(spec, layout, db, spec_text, plan=plan, backoff=backoff)
    if report is not None:
        result.reports.append(report)


def _promote(spec: Spec, layout: Layout, db: StateDB, result: RunResult, *, backoff: bool) -> None:
    """The promote stage on the newest training: it decides one that has no decision yet
    (trained just now, or before a crash); otherwise a cache hit."""
    from driftloop.promotion.stage import promote_stage

    report = promote_stage(spec, layout, db, backoff=backoff)
    if report is not None:
        result.reports.append(report)


def _reason(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    facts: _Facts,
    now: datetime,
    *,
    signals: bool,
) -> str | None:
    """The retrain policy's answer; without ``signals``, as if the checks found nothing."""
    from driftloop.orchestration.policy import Situation, retrain_reason

    new, last = facts.new, facts.last
    drift, decay = _signals(layout, new) if signals else (False, False)
    arrived = {b.batch_id: b.created_at for b in db.batches()}
    since = min((arrived[b["batch_id"]] for b in new), default=None)
    situation = Situation(
        trained_before=last is not None,
        spec_changed=last is not None
        and last.get("sections_hash") not in (None, facts.plan.sections),
        new_batches=len(new),
        new_data_since=datetime.fromisoformat(since) if since else None,
        drift=drift,
        decay=decay,
        last_trained_at=_last_trained_at(db),
    )
    return retrain_reason(spec.retrain, situation, now)


def _last_trained_at(db: StateDB) -> datetime | None:
    row = db.last_succeeded("train")
    return datetime.fromisoformat(row["finished_at"]) if row and row["finished_at"] else None
