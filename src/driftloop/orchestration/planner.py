"""The pass planner: a pure function from what is known about a project to the stage calls a
pass must make.

The facts (:class:`Facts`) are read at the edge (:mod:`driftloop.orchestration.facts`); the
plan is a list of waves, each a list of :class:`~driftloop.core.stage.StageCall` that do
not depend on each other (an orchestrator may run one wave's calls in parallel). A runner
executes the waves in order and asks again with fresh facts, until the plan is empty: what
the checks of new batches find can decide whether a training is due, so that decision waits
for them. The built-in loop and every orchestrator adapter execute the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from driftloop.core.spec import Spec
from driftloop.core.stage import StageCall
from driftloop.orchestration.policy import Situation, retrain_reason


@dataclass(frozen=True)
class BatchFacts:
    """One batch: whether its outputs are current, and what its check found."""

    batch_id: str
    arrived: datetime
    prepped: bool  # its processed output is current (its prep key succeeded)
    featured: bool  # its features output is current
    rows: int | None = None  # rows of its features output (None: not known)
    checked_against: frozenset[str] = frozenset()  # champion versions its check is current for
    drift: bool = False  # its check against the champion found drift
    decay: bool = False  # ... or decayed performance
    dismissed: bool = False  # its failed prep or features run was dismissed by a user
    retry_check: str | None = None  # the champion of its check that errored (retried)


@dataclass(frozen=True)
class Facts:
    """What a pass decides on."""

    batches: tuple[BatchFacts, ...]
    champion: str | None = None  # as the recorded decisions say
    trained: frozenset[str] = frozenset()  # batches the last successful training learned from
    trained_before: bool = False
    last_trained_at: datetime | None = None
    train_sections_changed: bool = False  # the model's spec sections changed since then
    training: str | None = None  # status of the training over the current features, if any
    undecided: bool = False  # a registered version the gate has not decided on yet
    # what the scheduled prediction-log monitor found against the champion since the last
    # training (its DriftDetected / PerformanceDegraded): retrains as a batch check's would
    log_drift: bool = False
    log_decay: bool = False


@dataclass(frozen=True)
class Plan:
    waves: list[list[StageCall]] = field(default_factory=list)
    waiting: str | None = None  # why new data does not train yet (the retrain policy)

    @property
    def calls(self) -> list[StageCall]:
        return [c for wave in self.waves for c in wave]

    def to_json(self) -> dict[str, object]:
        return {"waves": [[c.to_json() for c in w] for w in self.waves], "waiting": self.waiting}


def plan(spec: Spec, facts: Facts, now: datetime) -> Plan:
    """The next stage calls: data stages first; the model's once every batch is current."""
    live = [b for b in facts.batches if not b.dismissed]  # a dismissed failure: left out
    prep = [StageCall("prep", b.batch_id) for b in live if not b.prepped]
    planned = {c.batch_id for c in prep}
    features = [
        StageCall("features", b.batch_id)
        for b in live
        if not b.featured and (b.prepped or b.batch_id in planned)
    ]
    if prep or features:
        return Plan([w for w in (prep, features) if w])
    if not spec.model.enabled:
        return Plan()
    found = _model_plan(spec, facts, now)
    # A check that errored (not on its data) runs again against the champion it was for,
    # even when its batch was trained meanwhile (then the check is no longer "new")
    retries = [
        StageCall("monitor", b.batch_id, champion=b.retry_check)
        for b in facts.batches
        if b.retry_check is not None and b.batch_id in facts.trained
    ]
    if retries:
        return Plan([*found.waves, retries], waiting=found.waiting)
    return found


def _model_plan(spec: Spec, facts: Facts, now: datetime) -> Plan:
    """Check new batches against the champion, train when the policy says so, and gate.

    The check comes first when its verdict can decide the training; when the policy trains
    anyway (every N batches, say), training comes first and the check follows, against the
    champion the batches arrived under, so a new model is not kept waiting for a report.
    """
    if facts.undecided:
        return Plan([[StageCall("promote")]])
    featured = [b for b in facts.batches if b.featured]
    if not featured:
        return Plan()
    new = [b for b in featured if b.batch_id not in facts.trained]
    checks = []
    if spec.monitoring.on_new_data and facts.champion is not None:
        checks = [
            StageCall("monitor", b.batch_id, champion=facts.champion)
            for b in new
            if b.rows != 0 and facts.champion not in b.checked_against
        ]
    if facts.training == "succeeded":  # on exactly these batches: nothing new since
        return Plan([checks] if checks else [], waiting=None if new else _log_waits(spec, facts))
    if facts.training == "failed":  # on exactly these features and spec: reported as such
        return Plan([[StageCall("train")]])
    promote = StageCall("promote")  # the gate, on the training just made
    reason = retrain_reason(spec.retrain, _situation(facts, new, signals=False), now)
    if reason is not None:
        train = StageCall("train", reason=reason)
        return Plan([w for w in ([train], [promote], checks) if w])
    if checks:
        return Plan([checks])  # their verdict may decide the training: asked again after
    reason = retrain_reason(spec.retrain, _situation(facts, new, signals=True), now)
    if reason is not None:
        return Plan([[StageCall("train", reason=reason)], [promote]])
    waiting = None
    if new:
        waiting = (
            f"{len(new)} new batch(es) since the last training; the retrain policy waits "
            f"(every_batches {spec.retrain.every_batches}, no drift or decay found)"
        )
    else:
        waiting = _log_waits(spec, facts)
    return Plan(waiting=waiting)


def _log_waits(spec: Spec, facts: Facts) -> str | None:
    """Why a drift or decay the prediction-log monitor found does not train (no new batch:
    a retrain would fit the same rows), or None when it found none the policy acts on."""
    drift = facts.log_drift and spec.retrain.on_drift
    if not (drift or (facts.log_decay and spec.retrain.on_decay)):
        return None
    return (
        f"the prediction-log monitor found {'drift' if drift else 'decay'} against "
        f"v{facts.champion}, but no batch arrived since the last training (nothing new to "
        "learn from): the next one retrains"
    )


def _situation(facts: Facts, new: list[BatchFacts], *, signals: bool) -> Situation:
    """The retrain policy's facts; without ``signals``, as if the checks of new batches found
    nothing (what the prediction-log monitor found is known already, and counts)."""
    return Situation(
        trained_before=facts.trained_before,
        spec_changed=facts.train_sections_changed,
        new_batches=len(new),
        new_data_since=min((b.arrived for b in new), default=None),
        drift=signals and any(b.drift for b in new),
        decay=signals and any(b.decay for b in new),
        last_trained_at=facts.last_trained_at,
        log_drift=facts.log_drift,  # known before any check runs: counts either way
        log_decay=facts.log_decay,
    )
