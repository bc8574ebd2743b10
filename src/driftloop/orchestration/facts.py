"""What the planner decides on, read from the state database (never the stages' data, and a
manifest only where the database cannot say).

A pass's cost follows new work, not history: batches up to the *watermark* (every batch
through it was current when a pass last ended, under the same spec and feature code) are
taken as current when their outputs are still committed (a ``_SUCCESS`` stat each here, one
paginated listing of a stage folder's markers on an object store, once per pass), without
computing their keys again; only the batches after it are keyed in full. What a batch's
check against the champion found (drift, decay) is read from the state database too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import datetime

from driftloop.core.layout import is_complete, read_manifest
from driftloop.core.outputs import SUCCESS
from driftloop.core.stage import Context, Skip, StageCall, Work
from driftloop.core.state import Batch
from driftloop.core.urls import ObjectUrl
from driftloop.monitoring.stage import (
    CHECKED,
    MONITOR_SECTIONS,
    SIGNAL,
    check_key,
    check_signals,
    recorded_champion,
)
from driftloop.orchestration.planner import BatchFacts, Facts
from driftloop.orchestration.runner import is_current, ran, stage_def
from driftloop.prep import stage as prep_stage

WATERMARK = "current_through"
MANY = 50  # batches to key in full, from which the whole ledger is read at once


def gather(ctx: Context) -> Facts:
    spec, layout, db = ctx.spec, ctx.layout, ctx.db
    prep, features = stage_def("prep"), stage_def("features")
    known = ctx.once("trusted", lambda: _trusted(ctx))  # the same in every round
    if sum(isinstance(b, Batch) for b in known) > MANY:  # one read of the ledger, not one each
        ctx.once(prep_stage.FILES_BY_BATCH, db.files_by_batch)
    batches = []
    for batch in known:
        if isinstance(batch, BatchFacts):
            batches.append(batch)
            continue
        b = batch.batch_id
        featured = dismissed = False
        work = prep.work(ctx, StageCall("prep", b))
        prepped = is_current(ctx, "prep", work)
        if prepped:
            work = features.work(ctx, StageCall("features", b))
            featured = is_current(ctx, "features", work)
        dismissed = not featured and _dismissed(ctx, "features" if prepped else "prep", work)
        arrived = datetime.fromisoformat(batch.created_at)
        batches.append(BatchFacts(b, arrived, prepped, featured, dismissed=dismissed))
    if not spec.model.enabled:
        return Facts(tuple(batches))
    from driftloop.train.stage import TRAIN_SECTIONS, last_training, train_plan

    champion = recorded_champion(db, spec.name)
    last = last_training(layout, db)
    trained = frozenset(m["batch_id"] for m in last["inputs"]) if last else frozenset()
    monitor_sections = spec.section_hash(*MONITOR_SECTIONS)
    retry = _checks_to_retry(ctx, monitor_sections)
    current = ctx.current()
    # the batches the checked mark covers: known without a key or a signal each
    mark = _checked_mark(ctx, champion, monitor_sections)
    covered = ctx.once(f"covered:{mark}", lambda: _covered(ctx, batches, champion, mark))
    to_check = [
        f for f in batches if f.featured and f.batch_id not in trained and f.batch_id not in covered
    ]
    signals = _signals(ctx, [f.batch_id for f in to_check])
    seen: dict[tuple[object, ...], BatchFacts] = ctx.once("checked", dict)
    checked = []
    for f in batches:
        if not f.featured or f.batch_id in trained:
            checked.append(f)
            continue
        if (known_check := covered.get(f.batch_id)) is not None:
            checked.append(known_check)
            continue
        b, found = f.batch_id, signals.get(f.batch_id)
        # what decides a batch's check facts; the same in a later plan of the pass, until a
        # check runs (one may rerun under the same key, its output having gone): known
        published = (current.get(("features", b)), current.get(("monitor", b)))
        seen_as = (f, champion, *published, ran(ctx)["monitor"])
        facts = seen.get(seen_as)
        if facts is None or found is None:
            facts = _with_check(ctx, f, champion, found, monitor_sections)
        seen[seen_as] = facts
        checked.append(facts)
    if retry:
        checked = [dataclasses.replace(f, retry_check=retry.get(f.batch_id)) for f in checked]
    # the training over the features so far: they change when a data stage runs
    data_runs = f"{ran(ctx)['prep']}:{ran(ctx)['features']}"
    plan = ctx.once(
        f"train_plan:{data_runs}",
        lambda: train_plan(
            spec,
            layout,
            db,
            current=ctx.current(),
            committed=frozenset(f.batch_id for f in batches if f.featured),  # seen this pass
            batches=ctx.once("batches", db.batches),
        ),
    )
    row = db.last_succeeded("train")
    promote = stage_def("promote").work(ctx, StageCall("promote"))
    # a training not decided yet (a gate that failed is reported when it fails, and decided
    # again only for a newer training)
    undecided = (
        isinstance(promote, Work)
        and not is_current(ctx, "promote", promote)
        and (db.run_info(promote.key) or {}).get("status") != "failed"
    )
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
        undecided=undecided,
        **_log_findings(ctx, champion),
    )


LOG_FINDINGS = ("DriftDetected", "PerformanceDegraded")


def _log_findings(ctx: Context, champion: str | None) -> dict[str, bool]:
    """What the prediction-log monitor (``driftloop monitor``, scheduled) found against the
    champion since the last model was registered: its events, read from there on (a few)."""
    if champion is None:
        return {"log_drift": False, "log_decay": False}
    after = ctx.db.last_event_id(("ModelRegistered",))
    found = {
        e["type"]
        for e in ctx.db.events_after(after, LOG_FINDINGS)
        if str(e.get("version")) == champion
        and isinstance(e.get("current"), dict)
        and e["current"].get("kind") == "prediction_log"
    }
    return {"log_drift": "DriftDetected" in found, "log_decay": "PerformanceDegraded" in found}


def _checked_mark(ctx: Context, champion: str | None, sections: str) -> tuple[int, str]:
    """The checked mark when it holds for this champion, monitoring sections and data
    environment: (the sequence through which it covers batches, its findings as JSON)."""
    found = ctx.db.fact(CHECKED)
    if champion is None or not found:
        return 0, "{}"
    mark = json.loads(found)
    now = {"champion": champion, "sections": sections, "environment": environment(ctx)}
    if any(mark.get(k) != v for k, v in now.items()):
        return 0, "{}"
    return int(mark["seq"]), json.dumps(mark["found"], sort_keys=True)


def _covered(
    ctx: Context, batches: list[BatchFacts], champion: str | None, mark: tuple[int, str]
) -> dict[str, BatchFacts]:
    """Batch id -> facts, for the featured batches up to the checked mark whose check is
    still committed (one listing of the checks' markers on an object store): checked
    against the champion, with what the mark says the check found."""
    through, found_json = mark
    if champion is None or through == 0:
        return {}
    found = json.loads(found_json)
    seqs = _seqs(ctx)
    checks, versions = str(ctx.layout.batch_checks), frozenset({champion})
    committed = _committed_under(ctx)  # (a fresh listing per call: checks commit in a pass)
    covered = {}
    for f in batches:
        if seqs[f.batch_id] > through:
            break
        if f.featured and committed(checks, f.batch_id):
            drift, decay = found.get(f.batch_id, (False, False))
            covered[f.batch_id] = BatchFacts(
                f.batch_id, f.arrived, f.prepped, f.featured, None, versions, drift, decay
            )
    return covered


def _signals(ctx: Context, batch_ids: list[str]) -> dict[str, dict[str, bool]]:
    """What the latest checks of these batches found: a fact each for a few, all at once
    (and once until a check runs) for many."""
    if len(batch_ids) > MANY:
        return ctx.once(f"signals:{ran(ctx)['monitor']}", lambda: check_signals(ctx.db))
    found = {}
    for b in batch_ids:
        if (value := ctx.db.fact(f"{SIGNAL}{b}")) is not None:
            found[b] = json.loads(value)
    return found


def _seqs(ctx: Context) -> dict[str, int]:
    return ctx.once(
        "seqs", lambda: {b.batch_id: b.seq for b in ctx.once("batches", ctx.db.batches)}
    )


def _checks_to_retry(ctx: Context, sections: str) -> dict[str, str]:
    """Batch id -> the champion version of its current check when that check errored (an
    unexpected error, retried; one that failed on its data is not). The version is found
    by the check's key among the versions ever decided on."""
    errored = [
        f
        for f in ctx.once("failures", ctx.db.failures)
        if f["stage"] == "monitor" and f["status"] == "error"
    ]
    if not errored:
        return {}
    current = ctx.current()
    versions = {str(d["version"]) for d in ctx.db.decisions(ctx.spec.name)}
    found = {}
    for f in errored:
        features_key = str(current.get(("features", f["batch_id"])))
        for version in versions:
            if check_key(sections, features_key, version) == f["key"]:
                found[f["batch_id"]] = version
    return found


def _trusted(ctx: Context) -> list[BatchFacts | Batch]:
    """Every batch in order: as facts (current) when it is up to the watermark and its
    outputs are still committed (a ``_SUCCESS`` check each), else as it is, to be keyed in
    full. A pass's own work only adds batches after the watermark, so a pass computes this
    once, not once per plan."""
    through, passed = _trusted_seq(ctx)
    processed, featured = str(ctx.layout.processed), str(ctx.layout.features)
    committed = _committed_under(ctx)
    return [
        BatchFacts(b.batch_id, datetime.fromisoformat(b.created_at), True, True)
        if b.seq <= through
        and b.batch_id not in passed
        and committed(processed, b.batch_id)
        and committed(featured, b.batch_id)
        else b
        for b in ctx.once("batches", ctx.db.batches)
    ]


TRUSTED_OUTPUTS = "trusted_outputs"  # ctx.memo: output_stamps the last pass left, or {}


def trust_outputs(ctx: Context, *, due: bool) -> bool:
    """Between rechecks (``due`` False), a pass trusts that the outputs it asks about (the
    batches through the watermark or the checked mark, committed when the pass that
    recorded them ended) are still committed, in each stage folder still as the last pass
    left it (:func:`~driftloop.orchestration.settled.output_stamps`): an output withdrawn,
    deleted or left behind changes its folder, and that folder's outputs are checked one by
    one as before. A recheck checks them all. True when the outputs are trusted (no
    recheck of them due)."""
    from driftloop.orchestration.settled import OUTPUTS, recheck_due

    found = None if ctx.layout.on_object_store else ctx.db.fact(OUTPUTS)
    seen = json.loads(found) if found else {}
    at = seen.get("checked_at") if isinstance(seen, dict) else None
    due = due or recheck_due(None if at is None else str(at), ctx.spec.ingest.recheck_seconds)
    ctx.memo[TRUSTED_OUTPUTS] = {} if due else dict(seen.get("stamps", {}))
    ctx.memo[OUTPUTS_CHECKED_AT] = time.time() if due else at
    return not due


OUTPUTS_CHECKED_AT = "outputs_checked_at"  # ctx.memo: when the outputs were last all checked


def record_outputs_seen(ctx: Context) -> None:
    """After a pass: its output folders as it leaves them, for the next pass to trust, and
    when a pass last checked every output it trusts (this one's start, if it did)."""
    from driftloop.orchestration.settled import OUTPUTS, output_stamps

    if ctx.layout.on_object_store or OUTPUTS_CHECKED_AT not in ctx.memo:
        return
    found = {"stamps": output_stamps(ctx.layout), "checked_at": ctx.memo[OUTPUTS_CHECKED_AT]}
    seen = json.dumps(found, sort_keys=True)
    if ctx.db.fact(OUTPUTS) != seen:
        ctx.db.record_fact(OUTPUTS, seen)


def _committed_under(ctx: Context) -> Callable[[str, str], bool]:
    """Whether ``<folder>/<batch>`` is committed: a stat of its ``_SUCCESS`` here (os.path,
    not pathlib: 10,000s of batches), unless the folder is as the last pass left it and no
    recheck is due (:func:`trust_outputs`); on an object store, one paginated listing of the
    folder's markers, made on the first question (1,000 keys a request, not a GET each)."""
    if not ctx.layout.on_object_store:
        from driftloop.orchestration.settled import output_stamps

        trusted = ctx.memo.get(TRUSTED_OUTPUTS) or {}
        now = output_stamps(ctx.layout) if trusted else {}
        unchanged = {
            str(folder)
            for folder in ctx.layout.outputs
            if (stamp := trusted.get(ctx.layout.relative(folder))) is not None
            and stamp == now.get(ctx.layout.relative(folder)) != "missing"
        }

        def committed_here(folder: str, b: str) -> bool:
            return folder in unchanged or os.path.exists(f"{folder}/{b}/{SUCCESS}")  # noqa: PTH110

        return committed_here
    from driftloop.core.layout import committed_outputs

    listed: dict[str, set[str]] = {}

    def committed(folder: str, b: str) -> bool:
        if folder not in listed:
            listed[folder] = committed_outputs(ObjectUrl(folder))
        return b in listed[folder]

    return committed


def _committed(marker: str) -> bool:
    """``os.path.exists`` of an ``<output>/_SUCCESS`` address, asked of the output's store."""
    return is_complete(marker[: -len(SUCCESS) - 1])


def _exists(ctx: Context) -> Callable[[str], bool]:
    """Whether an ``<output>/_SUCCESS`` is there: a stat each here (os.path, not pathlib:
    10,000s of batches), a GET of the marker each on an object store."""
    return _committed if ctx.layout.on_object_store else os.path.exists


def _with_check(
    ctx: Context,
    batch: BatchFacts,
    champion: str | None,
    found: dict[str, bool] | None,
    sections: str,
) -> BatchFacts:
    """A new batch with what its check against the champion found, and whether that check
    is current (keyed by the batch's features and the champion, as the monitor stage keys
    it); its rows are read only when a check may be due (a batch without rows gets none)."""
    current = ctx.current()
    b = batch.batch_id
    versions: frozenset[str] = frozenset()
    rows = None
    if champion is not None:
        features_key = current.get(("features", b))
        key = check_key(sections, str(features_key), champion)
        out = os.path.join(str(ctx.layout.batch_checks), b, SUCCESS)  # noqa: PTH118
        if current.get(("monitor", b)) == key and _exists(ctx)(out):
            versions = frozenset({champion})
        elif features_key is None or not is_current(
            ctx, "monitor", stage_def("monitor").work(ctx, StageCall("monitor", b, champion))
        ):
            rows = read_manifest(ctx.layout.features / b).get("rows")
        else:
            versions = frozenset({champion})
    out_dir = ctx.layout.batch_checks / b
    if found is None and is_complete(out_dir):  # (rare: found is None)
        # a check written before its findings were kept in the state database
        summary = read_manifest(out_dir)["summary"]
        found = {
            "drift": bool(summary["drift_detected"]),
            "decay": bool(summary["performance_degraded"]),
        }
        ctx.db.record_fact(f"{SIGNAL}{b}", json.dumps(found))
    return BatchFacts(
        b,
        batch.arrived,
        batch.prepped,
        batch.featured,
        rows,
        versions,
        drift=bool(found and found["drift"]),
        decay=bool(found and found["decay"]),
    )


def environment(ctx: Context) -> str:
    """What every batch's data stages depend on besides its own files: the spec, the user's
    feature module, and the stages' versions and sections as this release keys them (an
    upgrade that keys a batch differently moves the watermark back)."""
    from driftloop.features.stage import FEATURES_SECTIONS, FEATURES_VERSION, user_code_hash

    digest = hashlib.sha256(ctx.layout.spec.read_bytes())
    digest.update(ctx.once("user_code", lambda: user_code_hash(ctx.spec, ctx.layout.root)).encode())
    keyed = (
        prep_stage.PREP_VERSION,
        ctx.spec.section_hash(*prep_stage.PREP_SECTIONS),
        FEATURES_VERSION,
        ctx.spec.section_hash(*FEATURES_SECTIONS),
    )
    digest.update("\0".join(keyed).encode())
    return digest.hexdigest()


def _trusted_seq(ctx: Context) -> tuple[int, frozenset[str]]:
    """The watermark's batch sequence, and the dismissed batches it passed (keyed in full
    always: one may keep outputs of an earlier key, a stale batch, and a retry runs it)."""
    found = ctx.db.fact(WATERMARK)
    if not found:
        return 0, frozenset()
    mark = json.loads(found)
    if mark.get("environment") != environment(ctx):
        return 0, frozenset()
    return int(mark["seq"]), frozenset(mark.get("dismissed", ()))


def _dismissed(ctx: Context, stage: str, work: Work | Skip) -> bool:
    """A user dismissed this very call's failure (a new key, from new data or a new spec,
    runs again)."""
    found = ctx.once("dismissed", ctx.db.dismissed_keys)
    return isinstance(work, Work) and found.get((stage, work.batch_id)) == work.key


def advance_watermark(ctx: Context, facts: Facts) -> None:
    """Record the last batch through which every batch is current (after a pass)."""
    seqs = {b.batch_id: b.seq for b in ctx.once("batches", ctx.db.batches)}
    through, passed = 0, []
    for b in facts.batches:
        if not ((b.prepped and b.featured) or b.dismissed):
            break
        through = seqs[b.batch_id]
        if b.dismissed:
            passed.append(b.batch_id)
    found: dict[str, object] = {"environment": environment(ctx), "seq": through}
    if passed:
        found["dismissed"] = passed
    mark = json.dumps(found)
    if ctx.db.fact(WATERMARK) != mark:
        ctx.db.record_fact(WATERMARK, mark)
    if ctx.spec.model.enabled and facts.champion is not None:
        _advance_checked(ctx, facts, seqs)


def _advance_checked(ctx: Context, facts: Facts, seqs: dict[str, int]) -> None:
    """Record the last batch through which every batch was trained on, has no rows to check,
    or has a current check against the champion that did not error (after a pass), with
    what those checks found."""
    through, found = 0, {}
    for b in facts.batches:
        if b.batch_id in facts.trained:
            through = seqs[b.batch_id]
            continue
        if b.dismissed and not b.featured:
            through = seqs[b.batch_id]
            continue
        if not b.featured or b.retry_check is not None:
            break
        if b.rows != 0 and facts.champion not in b.checked_against:
            break
        through = seqs[b.batch_id]
        if b.drift or b.decay:
            found[b.batch_id] = (b.drift, b.decay)
    mark = {
        "champion": facts.champion,
        "sections": ctx.spec.section_hash(*MONITOR_SECTIONS),
        "environment": environment(ctx),
        "seq": through,
        "found": found,
    }
    text = json.dumps(mark, sort_keys=True)
    if ctx.db.fact(CHECKED) != text:
        ctx.db.record_fact(CHECKED, text)
