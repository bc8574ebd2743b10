"""The retrain policy as a pure function: given what happened since the last training, is a
new one due, and why?

The facts arrive as a :class:`Situation` (counted by the loop from the state database);
"now" arrives as an argument. A drift or decay counts wherever it was found: by the check
of a new batch against the champion, or by the scheduled prediction-log monitor
(``driftloop monitor``) against the champion since the last training. Either retrains when
there is new data to learn from; without any, a retrain would fit the same rows, so the
policy waits for the next batch (and the planner says so). The answer is a reason to record with the
``RetrainRequested`` event, or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from driftloop.core.spec import RetrainSpec


@dataclass(frozen=True)
class Situation:
    """What the loop knows when it asks."""

    trained_before: bool  # a training run has succeeded on this project
    spec_changed: bool  # the model's spec sections differ from the last training's
    new_batches: int  # batches with features that the last training did not see
    new_data_since: datetime | None  # when the oldest of those arrived
    drift: bool  # DriftDetected on data that arrived since the last training
    decay: bool  # PerformanceDegraded on such data
    last_trained_at: datetime | None
    log_drift: bool = False  # DriftDetected by the prediction-log monitor since then
    log_decay: bool = False  # PerformanceDegraded by it


def retrain_reason(policy: RetrainSpec, situation: Situation, now: datetime) -> str | None:
    """Why a training is due now, or None."""
    s = situation
    if s.new_batches == 0 and not s.spec_changed:
        return None  # nothing new to learn from: a retrain would fit the same rows
    if not s.trained_before:
        return "first model"
    if s.spec_changed:
        return "the model's spec changed"
    if policy.cooldown_minutes and s.last_trained_at is not None:
        wait = timedelta(minutes=policy.cooldown_minutes) - (now - s.last_trained_at)
        if wait > timedelta(0):
            return None
    if policy.on_decay and s.decay:
        return f"performance degraded on new data ({s.new_batches} new batch(es))"
    if policy.on_decay and s.log_decay:
        return f"performance degraded in the prediction log ({s.new_batches} new batch(es))"
    if policy.on_drift and s.drift:
        return f"drift detected on new data ({s.new_batches} new batch(es))"
    if policy.on_drift and s.log_drift:
        return f"drift detected in the prediction log ({s.new_batches} new batch(es))"
    if policy.every_batches and s.new_batches >= policy.every_batches:
        return f"{s.new_batches} new batch(es) (retrain.every_batches {policy.every_batches})"
    if policy.every_hours is not None and s.new_data_since is not None:
        waited = now - s.new_data_since
        if waited >= timedelta(hours=policy.every_hours):
            hours = waited.total_seconds() / 3600
            return f"new data waited {hours:.1f} h (retrain.every_hours {policy.every_hours:g})"
    return None
