"""Moving the champion alias: manual promote and rollback, and recorded decisions the
registry missed.
"""

from __future__ import annotations

import getpass
import logging
import math
from typing import Any

from driftloop.core.errors import RegistryError, first_line
from driftloop.core.layout import Layout
from driftloop.core.manifests import Decision
from driftloop.core.spec import Spec
from driftloop.core.state import StateDB
from driftloop.models.registry import CHAMPION, Registry, open_registry

log = logging.getLogger(__name__)


def manual_alias_change(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    *,
    version: str | None,
    why: str,
    actor: str | None,
    registry: Registry | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """``models promote VERSION`` (version given) or ``models rollback`` (None).
    ``registry``: the project's own (from the spec) unless given. A version whose holdout
    metric is undefined (NaN or missing) is refused unless ``force``; forced, the decision's
    reason says so."""
    registry = open_registry(spec, layout, registry)
    current = registry.alias(CHAMPION)
    kind = "manual"
    if version is None:
        kind = "rollback"
        version = _previous_champion(db, spec.name, current)
        if version is None:
            raise RegistryError(
                f"model {spec.name!r}: there is no earlier champion to roll back to "
                f"(champion is {current or 'unset'}); see 'driftloop models'"
            )
    found = registry.get_version(version)
    if found is None:
        raise RegistryError(
            f"model {spec.name!r} has no version {version}; see 'driftloop models' for the versions"
        )
    problem = undefined_metric(spec, found.metrics) if kind == "manual" else None
    if problem is not None:
        if not force:
            raise RegistryError(
                f"model {spec.name!r} v{version}: {problem}; it is not promoted: pass --force "
                "to serve it anyway (the reason is recorded with the decision)"
            )
        why = f"{why} (forced: {problem})"
    decision = {
        "model": spec.name,
        "version": version,
        "decision": kind,
        "reason": why,
        "metric": spec.promotion_metric,
        "challenger_score": None,
        "champion_version": current,
        "champion_score": None,
        "baseline_score": None,
        "actor": actor or _who(),
    }
    Decision.model_validate(decision)  # its shape, checked before it is recorded
    decision_id = db.record_decision(decision, applied=False)  # recorded first, as the gate does
    move_alias(spec, layout, db, decision_id, version, registry=registry)
    registry.tag(version, {"driftloop.decision": kind, "driftloop.reason": why})
    return decision


def undefined_metric(spec: Spec, metrics: dict[str, float]) -> str | None:
    """Why a version's holdout metric cannot be trusted (NaN or missing), or None."""
    metric = spec.promotion_metric
    value = metrics.get(f"holdout_{metric}")
    if value is None:
        return f"its holdout {metric} was not recorded"
    if math.isnan(value):
        return f"its holdout {metric} is undefined (NaN)"
    return None


def move_alias(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    decision_id: int,
    version: str,
    *,
    registry: Registry | None = None,
) -> None:
    """Apply a recorded decision; one the registry refuses is withdrawn, not left pending
    (the next pass must not apply what the user was told failed)."""
    try:
        open_registry(spec, layout, registry).set_alias(CHAMPION, version)
    except Exception as exc:
        db.withdraw(decision_id, f"{type(exc).__name__}: {first_line(exc)}")
        raise
    db.mark_applied(decision_id)
    signal_champion_moved(layout)


def signal_champion_moved(layout: Layout) -> None:
    """Tell servers on this machine that the alias moved (``ChampionMoved`` is recorded):
    ``layout.champion_moved`` is rewritten, and a server watching it checks the registry at
    once instead of at its next poll. Best effort: a server that is not told polls
    (``serving.events_poll_seconds``), so a failure here is logged, never raised."""
    try:
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        layout.champion_moved.write_bytes(b"")
    except OSError as exc:
        log.warning("could not signal the champion's move to local servers: %s", exc)


def apply_pending_decisions(
    spec: Spec, layout: Layout, db: StateDB, *, registry: Registry | None = None
) -> list[dict[str, Any]]:
    """Point the registry's alias where the newest recorded decision says (after a crash
    between recording a promotion and moving the alias); returns what was applied.

    Only the newest decision that moves the alias counts: an older one still pending was
    overtaken and is marked superseded, never applied over a newer one.
    """
    pending = db.unapplied(spec.name)
    if not pending:
        return []
    effective = [d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"]
    newest = effective[-1] if effective else None
    applied = []
    for decision in pending:
        if newest is not None and decision["id"] == newest["id"]:
            open_registry(spec, layout, registry).set_alias(CHAMPION, str(decision["version"]))
            db.mark_applied(int(decision["id"]))
            signal_champion_moved(layout)
            applied.append(decision)
            log.warning(
                "applied a recorded decision the registry had missed: %s v%s (%s)",
                spec.name,
                decision["version"],
                decision["decision"],
            )
        else:
            db.mark_superseded(int(decision["id"]))
    return applied


def _previous_champion(db: StateDB, model: str, current: str | None) -> str | None:
    """The champion before ``current``: promotions push onto a stack, rollbacks pop it."""
    stack: list[str] = []
    for d in db.decisions(model, effective=True):
        if d["decision"] in ("promoted", "manual"):
            stack.append(d["version"])
        elif d["decision"] == "rollback" and stack:
            stack.pop()
    if stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
