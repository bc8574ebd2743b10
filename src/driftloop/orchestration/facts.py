"""What the planner decides on, read from the state database and the stage outputs' manifests
(never their data)."""

from __future__ import annotations

from datetime import datetime

from driftloop.core.layout import is_complete, read_manifest
from driftloop.core.stage import Context, StageCall
from driftloop.monitoring.stage import recorded_champion
from driftloop.orchestration.planner import BatchFacts, Facts
from driftloop.orchestration.runner import is_current, stage_def


def gather(ctx: Context) -> Facts:
    spec, layout, db = ctx.spec, ctx.layout, ctx.db
    batches = []
    prep, features = stage_def("prep"), stage_def("features")
    for batch in db.batches():
        call = StageCall("prep", batch.batch_id)
        prepped = is_current(ctx, "prep", prep.work(ctx, call))
        featured = prepped and is_current(
            ctx, "features", features.work(ctx, StageCall("features", batch.batch_id))
        )
        rows = None
        if featured:
            rows = read_manifest(layout.features / batch.batch_id).get("rows")
        batches.append(
            BatchFacts(
                batch.batch_id, datetime.fromisoformat(batch.created_at), prepped, featured, rows
            )
        )
    if not spec.model.enabled:
        return Facts(tuple(batches))
    from driftloop.train.stage import TRAIN_SECTIONS, last_training, train_plan

    champion = recorded_champion(db, spec.name)
    last = last_training(layout, db)
    trained = frozenset(m["batch_id"] for m in last["inputs"]) if last else frozenset()
    checked = []
    for b in batches:
        if b.featured and b.batch_id not in trained:
            b = _with_check(ctx, b, champion)
        checked.append(b)
    plan = train_plan(spec, layout, db)
    row = db.last_succeeded("train")
    return Facts(
        tuple(checked),
        champion=champion,
        trained=trained,
        trained_before=last is not None,
        last_trained_at=(
            datetime.fromisoformat(row["finished_at"]) if row and row["finished_at"] else None
        ),
        train_sections_changed=last is not None
        and last.get("sections_hash") not in (None, spec.section_hash(*TRAIN_SECTIONS)),
        training=(db.run_info(plan.key) or {}).get("status") if plan else None,
    )


def _with_check(ctx: Context, batch: BatchFacts, champion: str | None) -> BatchFacts:
    """A new batch with what its check against the champion found."""
    out_dir = ctx.layout.monitoring / "batches" / batch.batch_id
    if not is_complete(out_dir):
        return batch
    manifest = read_manifest(out_dir)
    summary = manifest["summary"]
    versions: frozenset[str] = frozenset()
    if champion is not None:
        found = stage_def("monitor").work(ctx, StageCall("monitor", batch.batch_id, champion))
        if is_current(ctx, "monitor", found):
            versions = frozenset({champion})
    return BatchFacts(
        batch.batch_id,
        batch.arrived,
        batch.prepped,
        batch.featured,
        batch.rows,
        versions,
        drift=bool(summary["drift_detected"]),
        decay=bool(summary["performance_degraded"]),
    )
