"""``driftloop batches``: the failures that stay until someone acts, and the two ways to act.

A stage run that failed on its data (a batch above the quarantine limit, a training that
cannot fit) is not retried until its key changes, and every ``driftloop run`` reports it
again and exits 1. A user either fixes the data or the spec (a new key runs by itself),
asks for the same call again (``retry``: after fixing something the key does not see, such
as a permission, or after a transient error gave up), or accepts the failure (``dismiss``:
the batch is left out of the loop, so training goes on without it). Both are recorded in
the state database with who asked and why (``RetryRequested``, ``FailureDismissed``).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from driftloop.core.errors import StateError
from driftloop.core.layout import Layout
from driftloop.core.spec import did_you_mean, load_spec
from driftloop.core.state import StateDB


def batch_failures(project: Path, *, spec: Any = None) -> dict[str, Any]:
    """Every batch's count, and the failed stage runs still in the way (unresolved or
    dismissed, with who dismissed them and why), oldest batch first. ``spec``: the
    project's, when the caller has read it already (the dashboard)."""
    layout = Layout(project)
    spec = spec or load_spec(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        found = db.failures()
        dismissals = {e["key"]: e for e in db.events_after(0, ("FailureDismissed",)) if "key" in e}
        seqs = {b.batch_id: b.seq for b in db.batches()}
    for f in found:
        f["seq"] = seqs.get(f["batch_id"])
        d = dismissals.get(f["key"]) if f["status"] == "dismissed" else None
        f["dismissed"] = (
            {"by": d["actor"], "reason": d["reason"], "at": d["ts"]} if d is not None else None
        )
    return {
        "batches": len(seqs),
        "unresolved": [f for f in found if f["status"] != "dismissed"],
        "dismissed": [f for f in found if f["status"] == "dismissed"],
    }


def dismiss(
    project: Path, batch_id: str, *, reason: str, actor: str | None = None
) -> list[dict[str, Any]]:
    """Accept ``batch_id``'s unresolved failures: the loop leaves the batch out (until its
    data or the spec gives it a new key, or ``retry``) and ``run`` stops exiting 1 for it."""
    if not reason.strip():
        raise StateError("dismissing a failure needs a reason (--reason TEXT), for the record")
    return _act(project, batch_id, "dismiss", reason=reason, actor=actor or _who())


def retry(project: Path, batch_id: str, *, actor: str | None = None) -> list[dict[str, Any]]:
    """Run ``batch_id``'s failed (or dismissed) stage calls again on the next pass."""
    return _act(project, batch_id, "retry", reason=None, actor=actor or _who())


def _act(
    project: Path, batch_id: str, action: str, *, reason: str | None, actor: str
) -> list[dict[str, Any]]:
    layout = Layout(project)
    spec = load_spec(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        known = [b.batch_id for b in db.batches()] + ["-"]
        if batch_id not in known:
            raise StateError(
                f"there is no batch {batch_id!r}{did_you_mean(batch_id, known)}; "
                "'driftloop batches' lists the failed ones"
            )
        statuses = ("failed", "error") if action == "dismiss" else ("failed", "error", "dismissed")
        mine = [f for f in db.failures() if f["batch_id"] == batch_id and f["status"] in statuses]
        if not mine:
            what = "unresolved" if action == "dismiss" else "failed or dismissed"
            raise StateError(
                f"batch {batch_id} has no {what} stage run to {action}; "
                "'driftloop batches' lists the failures"
            )
        done = []
        for f in mine:
            if action == "dismiss":
                done.append(db.dismiss(f["key"], reason=str(reason), actor=actor))
            else:
                done.append(db.request_retry(f["key"], actor=actor))
    return done


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
