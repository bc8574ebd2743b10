"""What a process killed mid-pass (``kill -9``, a power cut) left behind, put right at the
start of the next pass (``run``, ``watch``, ``work``), before anything is planned.

- A stage run recorded as ``running`` whose owner is gone: no live claim on its unit, or a
  claim whose holder is a process of this machine that no longer exists. It becomes an
  ``error`` with the reason ``interrupted``, which the runner retries (its key is unchanged,
  and a key whose output was committed before the kill is a cache hit).
- A registered version that no decision names and that the gate will not decide (it is not
  the newest finished training's: the training was killed after registering it, or a newer
  training came first): it is recorded as rejected with the reason ``interrupted`` and tagged
  so in the registry, never left dangling. The newest finished training's version is the
  promote stage's to decide, as always.

A pass with nothing to reconcile reads two small things (the running runs and, when a model
is trained, the registrations and decisions) and opens no registry.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any

from driftloop.core.errors import first_line
from driftloop.core.layout import Layout
from driftloop.core.procs import pid_alive
from driftloop.core.spec import Spec
from driftloop.core.state import StateDB

log = logging.getLogger(__name__)

ACTOR = "driftloop (restart)"
INTERRUPTED_RUN = (
    "interrupted: the process running it stopped before it finished ({owner}); it is run again"
)
INTERRUPTED_VERSION = (
    "interrupted: its training was stopped after registering it and before the gate "
    "decided (killed?); a training that finished replaces it, and 'driftloop models promote "
    "{version}' can still serve it"
)


def _alive(holder: str, host: str) -> bool:
    """A claim's holder (``host:pid:token``) still runs: another machine's is trusted while
    its claim is live; this machine's is asked."""
    owner_host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return owner_host != host or not pid.isdigit() or pid_alive(int(pid))


def abandoned_runs(
    running: list[dict[str, Any]], live_claims: dict[str, str], host: str
) -> list[tuple[dict[str, Any], str]]:
    """The running records whose owner is gone, each with who that was (pure)."""
    found = []
    for run in running:
        units = (run["stage"], f"{run['stage']}:{run['batch_id']}")
        holder = next((live_claims[u] for u in units if u in live_claims), None)
        if holder is not None and _alive(holder, host):
            continue
        owner = f"process {holder} is gone" if holder else "no process holds its claim"
        found.append((run, owner))
    return found


def reconcile_runs(db: StateDB, *, now: float | None = None) -> list[dict[str, Any]]:
    """Mark the running records a killed process left as interrupted errors (retried)."""
    running = db.running()
    if not running:
        return []
    claims = {c.unit: c.holder for c in db.claims(now=time.time() if now is None else now)}
    done = []
    for run, owner in abandoned_runs(running, claims, socket.gethostname()):
        why = INTERRUPTED_RUN.format(owner=owner)
        log.warning("%s %s: %s", run["stage"], run["batch_id"], why)
        db.finish_run(run["key"], run["stage"], run["batch_id"], 0.0, None, why, retry=True)
        done.append({**run, "error": why})
    return done


def undecided_versions(
    registered: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
    *,
    store: str,
    pending_run: str | None,
    lost_runs: set[str],
) -> list[dict[str, Any]]:
    """The ``ModelRegistered`` payloads of this store that no decision recorded since names,
    other than ``pending_run`` (the newest finished training's, which the gate decides) and
    those a ``RegistryHistoryLost`` event named (pure)."""
    out = []
    for event in registered:
        run_id, version = str(event["run_id"]), str(event["version"])
        if event.get("store") not in (None, store) or run_id in lost_runs or run_id == pending_run:
            continue
        if not any(
            str(d["version"]) == version and str(d["ts"]) >= str(event["ts"]) for d in decisions
        ):
            out.append(event)
    return out


def reconcile_versions(
    spec: Spec, layout: Layout, db: StateDB, *, train_interrupted: bool = False
) -> list[dict[str, Any]]:
    """Record the versions a killed training left undecided as rejected (``interrupted``).

    ``train_interrupted`` (a training was found killed): the registry is asked too, for
    versions it holds that the state database never heard of (a kill between registering a
    version and recording it) and that carry no decision tag.
    """
    from driftloop.models.cache import store_id
    from driftloop.models.registry import open_registry, store_uri

    registered = [
        e for e in db.events_after(0, types=("ModelRegistered",)) if e.get("model") == spec.name
    ]
    store = store_id(store_uri(spec, layout))
    if train_interrupted:
        known = {str(e["run_id"]) for e in registered}
        registered += [
            {
                "version": v.version,
                "run_id": v.run_id,
                "store": store,
                "ts": datetime.fromtimestamp((v.created or 0) / 1000, UTC).isoformat(),
            }
            for v in reversed(open_registry(spec, layout).versions())
            if v.run_id and v.run_id not in known and "driftloop.decision" not in v.tags
        ]
    if not registered:
        return []
    claim = db.claimant("train", now=time.time())
    if claim is not None and _alive(claim.holder, socket.gethostname()):
        return []  # a training runs now (another worker): its version is not dangling yet
    from driftloop.promotion.stage import newest_training

    newest = newest_training(layout, db)
    lost = {
        str(v["run_id"])
        for e in db.events_after(0, types=("RegistryHistoryLost",))
        for v in e.get("versions", [])
    }
    found = undecided_versions(
        registered,
        db.decisions(spec.name),
        store=store,
        pending_run=str(newest.manifest["run_id"]) if newest is not None else None,
        lost_runs=lost,
    )
    if not found:
        return []
    registry = open_registry(spec, layout)
    decided = []
    for event in found:
        version = str(event["version"])
        why = INTERRUPTED_VERSION.format(version=version)
        decision = {
            "model": spec.name,
            "version": version,
            "decision": "rejected",
            "reason": why,
            "actor": ACTOR,
        }
        db.record_decision(decision)
        try:
            registry.tag(version, {"driftloop.decision": "rejected", "driftloop.reason": why})
        except Exception as exc:  # the decision is recorded; the tag is a courtesy
            log.warning(
                "tagging %s v%s as rejected failed: %s", spec.name, version, first_line(exc)
            )
        log.warning("%s v%s: %s", spec.name, version, why)
        decided.append(decision)
    return decided
