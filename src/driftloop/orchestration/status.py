"""``driftloop status``: the project at a glance, read from the state database and the files.

Nothing here contacts MLflow: the champion is the one the recorded decisions name (the
registry follows them; ``driftloop models`` asks the registry itself).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from driftloop.core.layout import Layout, committed_outputs
from driftloop.core.state import StateDB


def project_status(
    project: Path, *, events: int = 15, runs: int = 15, spec: Any = None
) -> dict[str, Any]:
    """Champion, recent stage runs and durations, pending work, last drift verdict, events.
    ``spec``: the project's, when the caller has read it already (the dashboard)."""
    from driftloop.core.spec import load_spec
    from driftloop.core.storage import candidate_files, unmatched_files
    from driftloop.monitoring.stage import recorded_champion
    from driftloop.orchestration.loop import new_batches

    layout = Layout(project)
    spec = spec or load_spec(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        batches = db.batches()
        champion = recorded_champion(db, spec.name)
        decisions = [
            d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"
        ]
        pending = []
        # the committed outputs of each stage: one scan (a listing on an object store)
        committed = {
            stage: committed_outputs(folder)
            for stage, folder in (("prep", layout.processed), ("features", layout.features))
        }
        for batch in batches:
            missing = [stage for stage, done in committed.items() if batch.batch_id not in done]
            if missing:
                pending.append({"batch_id": batch.batch_id, "missing": missing})
        new, last = new_batches(layout, db, batches)
        # the ledger and what was seen of it in one read each, not a query per file
        known = {f.path: f.sha256 for files in db.files_by_batch().values() for f in files}
        taken = db.ingested_sightings()
        listed = candidate_files(spec, layout)
        waiting_files = [o.key for _, o in listed if o.key not in known]
        # taken under this name with other content (a pass hashed it and refused it)
        changed_files = [
            o.key
            for _, o in listed
            if o.key in known
            and (o.key, o.size, o.mtime_ns) not in taken
            and db.known_sighting(o.key, o.size, o.mtime_ns) not in (None, known[o.key])
        ]
        lease = db.lease("watch")
        served = db.last_event("ModelServed")
        lost = db.last_event("RegistryHistoryLost")
        status: dict[str, Any] = {
            "project": spec.name,
            "champion": {
                "version": champion,
                "since": decisions[-1]["ts"] if decisions else None,
                "reason": decisions[-1]["reason"] if decisions else None,
                "served": (
                    {"version": served["version"], "at": served["ts"], "pid": served.get("pid")}
                    if served
                    else None
                ),
            },
            "registry_history_lost": (
                {"at": lost["ts"], "message": lost["message"]} if lost else None
            ),
            "batches": len(batches),
            "pending": {
                "batches": pending,
                "files_not_ingested": waiting_files,
                "files_changed_in_place": changed_files,
                "files_unmatched": unmatched_files(spec, layout, listed),
                "batches_since_last_training": [b["batch_id"] for b in new],
                "last_training": last["version"] if last else None,
            },
            "watch": (
                {**lease, "alive": lease["expires_at"] > time.time()} if lease is not None else None
            ),
            "contract_changes": contract_changes(
                spec, db.events_after(0, types=("ContractChangeProposed",))
            ),
            "stale_batches": stale_batches(db),
            "last_drift_verdict": _last_verdict(layout),
            "stage_runs": db.stage_runs(limit=runs),
            "events": db.events(limit=events),
        }
    return status


def stale_batches(db: StateDB) -> list[dict[str, Any]]:
    """Batches that cannot be prepared again (a raw file gone or changed) and keep their
    earlier outputs: each with the reason and what to do, and whether a user dismissed it
    (then training reads its rows as they were prepared before)."""
    from driftloop.prep.stage import STALE

    return [
        {"batch_id": f["batch_id"], "dismissed": f["status"] == "dismissed", "reason": f["error"]}
        for f in db.failures()
        if f["stage"] == "prep" and STALE in (f["error"] or "")
    ]


def contract_changes(spec: Any, proposed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The values prep kept and reported (``ContractChangeProposed`` events) that the spec
    still does not list, per column, with the rows and batches they came in and the list
    that would accept them. A value added to ``allowed`` since is no longer shown."""
    found: dict[str, dict[Any, dict[str, Any]]] = {}
    batches: dict[str, list[str]] = {}
    for event in proposed:
        for change in event["changes"]:
            name = change["column"]
            rule = spec.contract.columns.get(name)
            if rule is None or rule.allowed is None or rule.new_values != "report":
                continue
            listed = {str(v) for v in rule.allowed}
            for v in change["values"]:
                if str(v["value"]) in listed:
                    continue
                seen = found.setdefault(name, {}).setdefault(
                    v["value"], {"value": v["value"], "rows": 0, "variant_of": v["variant_of"]}
                )
                seen["rows"] += v["rows"]
                if event["batch_id"] not in batches.setdefault(name, []):
                    batches[name].append(event["batch_id"])
    out: list[dict[str, Any]] = []

    def most_rows(v: dict[str, Any]) -> tuple[int, str]:
        return -int(v["rows"]), str(v["value"])

    for name, by_value in found.items():
        allowed = list(spec.contract.columns[name].allowed)
        listed_new: list[dict[str, Any]] = list(by_value.values())
        new = [v["value"] for v in listed_new if v["variant_of"] is None]
        out.append(
            {
                "column": name,
                "values": sorted(listed_new, key=most_rows),
                "batches": batches[name],
                "proposed": {
                    "key": f"contract.columns.{name}.allowed",
                    "allowed": sorted([*allowed, *new], key=str),
                },
            }
        )
    return out


def _last_verdict(layout: Layout) -> dict[str, Any] | None:
    """The newest monitoring report's summary (batch checks and scheduled runs alike)."""
    folder = layout.reports
    if isinstance(folder, str):  # on S3: one listing, one GET
        from driftloop.core.s3outputs import get_object, list_objects

        reports: list[Any] = list_objects(folder, ".json")
        if not reports:
            return None
        report = json.loads(get_object(reports[-1]))
    else:
        reports = sorted(folder.glob("*.json"))
        if not reports:
            return None
        report = json.loads(reports[-1].read_text(encoding="utf-8"))
    return {
        "generated_at": report["generated_at"],
        "model_version": report["model"]["version"],
        "current": report["current"].get("path") or report["current"].get("kind"),
        "drift_detected": report["summary"]["drift_detected"],
        "performance_degraded": report["summary"]["performance_degraded"],
        "messages": report["summary"]["messages"],
        "report": layout.relative(reports[-1]),
    }
