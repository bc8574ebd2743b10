"""Typed, past-tense events: what happened, stored in the event log before anyone acts on it.

Every event is a frozen model named for what happened; :func:`emit` hands one to each sink
(the state database always; an orchestrator's event bus where one runs the stages). Readers
get the same types back with :func:`parse`, so no module reads an event by a string it
spelled itself. Each event carries the ids that walk lineage: prediction -> model version
-> training run -> data manifests -> raw files.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


class Event(BaseModel):
    """The base of every event; ``type`` is the class name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: ClassVar[str] = "Event"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.type = cls.__name__
        if not cls.__name__.startswith("_"):
            KINDS[cls.__name__] = cls

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


KINDS: dict[str, type[Event]] = {}


class ArrivedFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    sha256: str


class DataArrived(Event):
    batch_id: str
    files: list[ArrivedFile]


class StageStarted(Event):
    stage: str
    batch_id: str
    key: str


class StageSucceeded(Event):
    stage: str
    batch_id: str
    key: str
    output: str | None


class StageFailed(Event):
    stage: str
    batch_id: str
    key: str
    output: str | None = None
    error: str


class ModelRegistered(Event):
    model: str
    version: str
    run_id: str
    store: str | None = None  # the registry's store id (models/cache.store_id); older: none


class RegistryHistoryLost(Event):
    """The registry no longer holds versions this project registered (its store was deleted
    or replaced): each lost ``{version, run_id, now}`` (``now``: the run id the registry
    holds under that number today, or None) and what to do."""

    model: str
    store: str
    versions: list[dict[str, Any]]
    message: str


class _Decision(Event):
    model: str
    version: str
    decision: str  # promoted, rejected, manual, rollback
    reason: str
    metric: str | None = None
    challenger_score: float | None = None
    champion_version: str | None = None
    champion_score: float | None = None
    baseline_score: float | None = None
    actor: str


class ModelPromoted(_Decision):
    """A decision that makes a version champion (the gate's, a manual promote, a rollback);
    recorded before the alias moves."""


class PromotionRejected(_Decision):
    """The gate kept the champion."""


class ChampionMoved(Event):
    """The registry's alias moved as a decision said: what servers follow."""

    model: str
    version: str
    decision: str


class PromotionWithdrawn(Event):
    decision_id: int
    reason: str


class RetrainRequested(Event):
    reason: str
    key: str
    new_batches: list[str]


class FailureDismissed(Event):
    """A user accepted a failed stage run (``driftloop batches dismiss``): the batch is left
    out of the loop until its key changes or someone retries it."""

    stage: str
    batch_id: str
    key: str
    error: str | None
    reason: str
    actor: str


class RetryRequested(Event):
    """A user asked for a failed (or dismissed) stage run to run again on the next pass."""

    stage: str
    batch_id: str
    key: str
    actor: str


class DriftDetected(Event):
    model: str
    version: str
    current: Any  # what was compared: a batch folder or a window of the prediction log
    report: dict[str, Any] | None
    dataset_drift: bool
    weighted_share_of_drifted_columns: float | None
    drift_share: float
    columns: list[dict[str, Any]]
    prediction_drift: dict[str, Any] | None
    target_drift: dict[str, Any] | None


class ColumnDriftDetected(Event):
    """Some inputs drifted, below the dataset drift threshold (``driftloop monitor`` exits
    4): a unit change upstream in one column, say. The retrain policy does not act on it."""

    model: str
    version: str
    current: Any
    report: dict[str, Any] | None
    drift_share: float
    weighted_share_of_drifted_columns: float | None
    columns: list[dict[str, Any]]


class PerformanceDegraded(Event):
    model: str
    version: str
    current: Any  # what was compared: a batch folder or a window of the prediction log
    report: dict[str, Any] | None
    metric: str
    holdout: float | None
    tolerance: float
    tolerance_kind: str | None = None  # relative (error metrics) | absolute; None: older
    overall: dict[str, Any]
    decayed_windows: list[dict[str, Any]]


class ContractChangeProposed(Event):
    """Prep kept rows whose values an open ``allowed`` list does not name (``new_values:
    report``); ``changes`` holds, per column, the new values with their rows (casing and
    whitespace variants marked ``variant_of``) and the proposed list."""

    batch_id: str
    changes: list[dict[str, Any]]


class ModelServed(Event):
    model: str
    version: str
    previous: str | None
    origin: str | None
    seconds: float | None
    at: float | None  # epoch seconds of the swap
    pid: int


class ModelLoadFailed(Event):
    model: str
    version: str
    reason: str
    serving: str | None
    pid: int


class EventSink(Protocol):
    """Where events go: the state database, an orchestrator's event bus."""

    def record(self, event: Event) -> None: ...


def emit(event: Event, sinks: Iterable[EventSink]) -> None:
    """Hand ``event`` to every sink, in order (the state database first)."""
    for sink in sinks:
        sink.record(event)


def parse(row: dict[str, Any]) -> Event:
    """An event as the log stores it (``type`` and payload fields, with ``id`` and ``ts``)."""
    kind = KINDS.get(str(row.get("type")))
    if kind is None:
        raise ValueError(f"unknown event type {row.get('type')!r}; known: {', '.join(KINDS)}")
    fields = {k: v for k, v in row.items() if k not in ("id", "ts", "type")}
    return kind.model_validate(fields)
