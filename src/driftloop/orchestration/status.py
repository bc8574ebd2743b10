"""``driftloop status``: the project at a glance, read from the state database and the files.

Nothing here contacts MLflow: the champion is the one the recorded decisions name (the
registry follows them; ``driftloop models`` asks the registry itself).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from driftloop.core.layout import Layout, is_complete
from driftloop.core.state import StateDB


def project_status(project: Path, *, events: int = 15, runs: int = 15) -> dict[str, Any]:
    """Champion, recent stage runs and durations, pending work, last drift verdict, events."""
    from driftloop.core.spec import load_spec
    from driftloop.core.storage import candidate_files
    from driftloop.monitoring.stage import recorded_champion
    from driftloop.orchestration.loop import new_batches

    layout = Layout(project)
    spec = load_spec(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        batches = db.batches()
        champion = recorded_champion(db, spec.name)
        decisions = [
            d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"
        ]
        pending = []
        for batch in batches:
            missing = [
                stage
                for stage, folder in (("prep", layout.processed), ("features", layout.features))
                if not is_complete(folder / batch.batch_id)
            ]
            if missing:
                pending.append({"batch_id": batch.batch_id, "missing": missing})
        new, last = new_batches(layout, db)
        known = {f.path for b in batches for f in db.batch_files(b.batch_id)}
        waiting_files = [o.key for _, o in candidate_files(spec, layout) if o.key not in known]
        lease = db.lease("watch")
        served = db.last_event("ModelServed")
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
            "batches": len(batches),
            "pending": {
                "batches": pending,
                "files_not_ingested": waiting_files,
                "batches_since_last_training": [b["batch_id"] for b in new],
                "last_training": last["version"] if last else None,
            },
            "watch": (
                {**lease, "alive": lease["expires_at"] > time.time()} if lease is not None else None
            ),
            "last_drift_verdict": _last_verdict(layout),
            "stage_runs": db.stage_runs(limit=runs),
            "events": db.events(limit=events),
        }
    return status


def _last_verdict(layout: Layout) -> dict[str, Any] | None:
    """The newest monitoring report's summary (batch checks and scheduled runs alike)."""
    reports = sorted(layout.reports.glob("*.json"))
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
