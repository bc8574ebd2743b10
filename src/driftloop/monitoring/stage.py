"""The per-batch check against the champion, as a stage: ``driftloop monitor --current
data/processed/<batch>`` run once per batch and champion, its summary kept as the stage's
output (the retrain policy reads drift and decay from it)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from driftloop.core.layout import Layout, atomic_output, is_complete, read_manifest, seal
from driftloop.core.stage import Context, Skip, StageCall, StageDef, Work, run_key
from driftloop.core.state import Batch, StateDB

MONITOR_VERSION = "1"
MONITOR_SECTIONS = ("monitoring", "target", "task", "model")


SIGNAL = "check:"  # + batch id: what the batch's latest check found, for the planner
# Through which batch (by sequence) every batch not trained on has a current check against
# one champion, and what those checks found (see orchestration/facts.py); a check that
# runs again on a batch up to it moves it back.
CHECKED = "checked_through"


def record_signal(db: StateDB, batch: Batch, found: dict[str, bool]) -> None:
    """Keep what a batch's check found; a check of a batch the checked mark covers moves the
    mark back before it (the mark's findings for that batch would be stale)."""
    mark = db.fact(CHECKED)
    if mark is not None and json.loads(mark)["seq"] >= batch.seq:
        db.record_fact(CHECKED, json.dumps({**json.loads(mark), "seq": batch.seq - 1}))
    db.record_fact(f"{SIGNAL}{batch.batch_id}", json.dumps(found))


def check_key(sections: str, features_key: str, champion: str) -> str:
    """A batch's check: its features (by their run key) against one champion version."""
    return run_key("monitor", MONITOR_VERSION, sections, [features_key, f"champion={champion}"])


def check_signals(db: StateDB) -> dict[str, dict[str, bool]]:
    """Batch id -> what its latest check found (drift, decay), from the state database."""
    return {
        name.removeprefix(SIGNAL): json.loads(value)
        for name, value in db.facts_with_prefix(SIGNAL).items()
    }


def recorded_champion(db: StateDB, model: str) -> str | None:
    """The champion the decisions in the state database name (the registry follows them)."""
    found = [d for d in db.decisions(model, effective=True) if d["decision"] != "rejected"]
    return str(found[-1]["version"]) if found else None


def work(ctx: Context, call: StageCall) -> Work | Skip:
    """A batch checked against a champion (the call's, else the recorded one), keyed by the
    batch's features and the champion's version."""
    spec, layout = ctx.spec, ctx.layout
    batch = ctx.db.batch(str(call.batch_id))
    batch_id = batch.batch_id
    champion = call.champion or recorded_champion(ctx.db, spec.name)
    if champion is None:
        return Skip("no champion to check against yet", batch_id)
    features = layout.features / batch_id
    if not is_complete(features):
        return Skip("no features for this batch", batch_id)
    manifest = read_manifest(features)
    if manifest.get("rows", 1) == 0:
        return Skip("the batch has no rows to check", batch_id)
    key = check_key(spec.section_hash(*MONITOR_SECTIONS), manifest["run_key"], champion)

    def run(started: float) -> dict[str, Any]:
        manifest = check_batch(layout, batch_id, key, ctx.now, champion)
        summary = manifest["summary"]
        found = {
            "drift": bool(summary["drift_detected"]),
            "decay": bool(summary["performance_degraded"]),
        }
        record_signal(ctx.db, batch, found)
        return manifest

    return Work(key, layout.batch_checks / batch_id, run, batch_id)


STAGE = StageDef(
    "monitor",
    per_batch=True,
    work=work,
    help="check a batch against the champion: data drift and realized performance",
)


def check_batch(
    layout: Layout, batch_id: str, key: str, now: datetime | None, version: str | None
) -> dict[str, Any]:
    """``driftloop monitor --current data/processed/<batch>`` as a stage output."""
    from driftloop.core.manifests import MonitorManifest
    from driftloop.monitoring.run import monitor

    current = layout.processed / batch_id
    report = monitor(layout.root, current=current, now=now, version=version).report
    manifest = MonitorManifest(
        stage="monitor",
        run_key=key,
        batch_id=batch_id,
        champion_version=report["model"]["version"],
        summary=report["summary"],
        paths=report.get("paths"),
    ).as_json()
    with atomic_output(layout.batch_checks / batch_id) as tmp:
        seal(tmp, manifest)
    return manifest
