"""driftloop's typed events on Prefect's event bus (the ``prefect`` extra).

:class:`PrefectEventSink` is an event sink (:func:`driftloop.core.events.emit`) that sends
each event to Prefect as ``driftloop.<Type>`` (``driftloop.DataArrived``,
``driftloop.DriftDetected``, ``driftloop.ModelPromoted``, ...) about one resource, the
project (``driftloop.project.<name>``), with the event's fields as the payload. Prefect's
automations and deployment triggers match on those names (``driftloop prefect serve``).

Most events are written inside the state database's own transactions, with the state they
describe, so the bus gets them from the event log afterwards: :func:`relay` sends every
event logged since the last one relayed and records how far it got (a fact in the state
database), so each is sent once per relay, and again only if a relay was killed between
sending and recording (at least once, never lost). Prefect is imported here only.
"""

from __future__ import annotations

import logging
from typing import Any

from driftloop.core.events import Event, parse
from driftloop.core.state import StateDB

log = logging.getLogger(__name__)

PREFIX = "driftloop."
RELAYED_FACT = "prefect_events_relayed"  # the id of the last event sent to Prefect
# what the bus gets: the events a user or an automation acts on (the stage runs' own
# StageStarted/StageSucceeded are Prefect's task runs already)
RELAYED = (
    "DataArrived",
    "StageFailed",
    "ModelRegistered",
    "ModelPromoted",
    "PromotionRejected",
    "ChampionMoved",
    "RetrainRequested",
    "DriftDetected",
    "ColumnDriftDetected",
    "PerformanceDegraded",
    "ContractChangeProposed",
    "FailureDismissed",
    "RetryRequested",
)


def resource_id(project_name: str) -> str:
    """The Prefect resource every event of a project is about (triggers match on it)."""
    return f"{PREFIX}project.{project_name}"


class PrefectEventSink:
    """An event sink that emits to Prefect's event bus (the API the client is set up for:
    ``PREFECT_API_URL``)."""

    def __init__(self, project_name: str) -> None:
        self.project_name = project_name

    def record(self, event: Event, *, event_id: int | None = None) -> None:
        from prefect.events import emit_event

        payload: dict[str, Any] = event.payload()
        if event_id is not None:
            payload["driftloop_event_id"] = event_id
        emit_event(
            event=f"{PREFIX}{event.type}",
            resource={
                "prefect.resource.id": resource_id(self.project_name),
                "prefect.resource.name": self.project_name,
            },
            payload=payload,
        )


def relay(db: StateDB, project_name: str) -> int:
    """Send the events logged since the last relay to Prefect; returns how many were sent."""
    after = int(db.fact(RELAYED_FACT) or 0)
    rows = db.events_after(after)
    if not rows:
        return 0
    sink = PrefectEventSink(project_name)
    sent = 0
    for row in rows:
        if row["type"] in RELAYED:
            sink.record(parse(row), event_id=int(row["id"]))
            sent += 1
    db.record_fact(RELAYED_FACT, str(rows[-1]["id"]))
    log.debug("relayed %d event(s) to Prefect (up to id %s)", sent, rows[-1]["id"])
    return sent


def flush() -> None:
    """Wait until the events emitted so far are sent (before a short-lived process ends)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
