"""The promote stage: the promotion gate over the newest training that has no decision yet.

It reads the train stage's output (its manifest: the version, the challenger's and the
baseline's metrics; ``holdout.parquet``: the holdout's lineage keys), re-scores the champion
on those rows from the processed data, decides, records the decision and moves the alias
(recorded first, applied second). Its output, ``data/promotions/<key>/``, is the decision.

A trained version is decided once. The run is keyed by the training's run key, so a second
call is a cache hit; and a decision the gate already recorded for the version (a process
killed before the output was written) is taken as it is, not made again. Only the newest
training counts: one that a newer training overtook before it was decided is left
undecided (it stays a plain version; ``driftloop models promote`` can still pick it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from driftloop import __version__
from driftloop.core.layout import (
    Layout,
    atomic_output,
    is_complete,
    read_manifest,
    seal,
)
from driftloop.core.manifests import PromoteManifest
from driftloop.core.spec import Spec
from driftloop.core.stage import Context, Skip, StageCall, StageDef, Work, run_key
from driftloop.core.state import StateDB
from driftloop.models.registry import Registry, open_registry
from driftloop.promotion.alias import apply_pending_decisions
from driftloop.promotion.gate import ACTOR, DECISION_FIELDS, gate, tag_decision

PROMOTE_VERSION = "1"


@dataclass(frozen=True)
class Training:
    """A train stage's output: its manifest, its folder and the batch its run is filed under."""

    manifest: dict[str, Any]
    folder: Path
    batch_id: str


def newest_training(layout: Layout, db: StateDB) -> Training | None:
    """The newest successful training's output, or None."""
    row = db.last_succeeded("train")
    if row is None or row["output"] is None:
        return None
    folder = layout.root / row["output"]
    if not is_complete(folder):
        return None
    return Training(read_manifest(folder), folder, row["batch_id"])


def work(ctx: Context, call: StageCall) -> Work | Skip:
    """Decide on the newest training, keyed by its run key."""
    spec, layout, db = ctx.spec, ctx.layout, ctx.db
    found = newest_training(layout, db)
    if found is None:
        return Skip("no training to decide on yet")
    training, train_dir = found.manifest, found.folder
    if "holdout" not in training:  # trained (and decided) before the gate was a stage
        return Skip("the newest training was decided by the train stage of an older driftloop")
    key = run_key("promote", PROMOTE_VERSION, "", [training["run_key"]])
    out_dir = layout.promotions / key[:16]

    def run(started: float) -> dict[str, Any]:
        chosen = open_registry(spec, layout)
        decision = _recorded(
            spec, layout, db, chosen, str(training["version"]), str(training["run_id"])
        )
        if decision is None:
            holdout = pl.read_parquet(train_dir / training["holdout"])
            decision = gate(spec, layout, db, chosen, training, holdout)
        manifest = {
            "stage": "promote",
            "stage_version": PROMOTE_VERSION,
            "code_version": __version__,
            "run_key": key,
            "model": spec.name,
            "version": str(training["version"]),
            "training": layout.relative(train_dir / "manifest.json"),
            "train_run_key": training["run_key"],
            "decision": decision,
            "timings": {"total_s": round(time.perf_counter() - started, 4)},
        }
        manifest = PromoteManifest.model_validate(manifest).as_json()  # its shape, checked
        with atomic_output(out_dir) as tmp_dir:
            seal(tmp_dir, manifest)
        return manifest

    return Work(key, out_dir, run, found.batch_id)


STAGE = StageDef(
    "promote",
    per_batch=False,
    work=work,
    help="the promotion gate on the newest training: champion vs challenger on its holdout",
)


def _recorded(
    spec: Spec, layout: Layout, db: StateDB, registry: Registry, version: str, run_id: str
) -> dict[str, Any] | None:
    """The gate's decision on ``version`` if it was recorded already (a process killed
    after recording it), brought to effect; None when the gate has not decided it.

    A decision the registry refused (withdrawn) does not count: it never took effect, and
    the gate decides again. Nor does one recorded before this run registered the version: it
    was for an older model under the same number (a registry whose store was made again).
    """
    registered = [
        str(e["ts"])
        for e in db.events_after(0, types=("ModelRegistered",))
        if e.get("model") == spec.name and str(e.get("run_id")) == run_id
    ]
    since = registered[-1] if registered else ""
    found = [
        d
        for d in db.decisions(spec.name)
        if d["actor"] == ACTOR
        and str(d["version"]) == version
        and d["applied"] != -1
        and str(d["ts"]) >= since
    ]
    if not found:
        return None
    decision = {k: found[-1][k] for k in DECISION_FIELDS}
    apply_pending_decisions(spec, layout, db, registry=registry)  # if it is still pending
    tag_decision(registry, decision)
    return decision
