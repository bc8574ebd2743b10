"""``driftloop watch``: the loop that runs by itself.

Holds the project's writer lease, listens for files landing under ``data/raw`` (the raw
store's notifications: watchdog on this machine; polling when the OS cannot notify) and,
when the spec sets ``ingest.events``, for S3 event notifications on an SQS queue
(:mod:`driftloop.core.sqs`: each message wakes a pass and is deleted once the ledger has its
objects; a listing every ``ingest.events.listing_seconds`` finds what a lost one missed), and
makes a pass (:func:`run_pass`) whenever something landed, a transient failure's backoff ran
out, or a timer fired. On ``monitoring.schedule_minutes`` it also monitors the prediction
log; a drift or decay found there makes the next pass at once, and the retrain policy
retrains on it when new batches arrived since the last training (the planner's rule, the
same under Prefect). A pass that fails (a broken spec edited in place, a disk error) is
reported and the loop goes on; Ctrl-C or SIGTERM stops it between passes, and since every
step is idempotent, so does ``kill -9``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.core.errors import DriftloopError, NothingToMonitorError, first_line
from driftloop.core.layout import Layout
from driftloop.core.rawstore import RawObject, Subscription, raw_store
from driftloop.core.spec import Spec, load_spec
from driftloop.core.text import shown
from driftloop.orchestration.lease import Lease
from driftloop.orchestration.loop import RunResult, run_pass

if TYPE_CHECKING:
    from driftloop.core.s3events import S3Event
    from driftloop.core.sqs import EventConsumer
    from driftloop.core.state import StateDB

log = logging.getLogger(__name__)

IDLE_SECONDS = 10.0  # between passes when nothing lands and the OS notifies


@dataclass
class WatchState:
    """What the status line shows."""

    passes: int = 0
    last_pass_seconds: float = 0.0
    last_error: str | None = None
    last_work: str | None = None
    next_monitor: datetime | None = None
    notifications: str = "watchdog"
    history: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # files no source's glob matches


class Watcher:
    """Passes on events and timers until stopped."""

    def __init__(
        self,
        project: Path,
        *,
        interval: float = 1.0,
        on_pass: Callable[[RunResult], None] | None = None,
        on_status: Callable[[WatchState], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.project = project
        self.layout = Layout(project)
        self.interval = interval
        self.on_pass = on_pass
        self.on_status = on_status
        self.clock = clock
        self.state = WatchState()
        self.stop = threading.Event()
        self._wake = threading.Event()
        # Files the OS said are finished (closed after writing, or renamed into place), with
        # their (size, mtime_ns) then: ingest takes them without waiting out the settle time.
        self.complete: dict[str, tuple[int, int]] = {}
        self._changed: set[str] = set()  # files changed in place, reported already
        self.consumer: EventConsumer | None = None  # ingest.events' queue, when set
        self._listing_seconds = 0.0
        self._storage: dict[str, str | None] = {}  # the spec's storage settings

    def _state_url(self) -> str | None:
        """The spec's state.url for the lease; a spec broken at start leaves the default
        (DRIFTLOOP_STATE_URL or the project's file) until it is fixed and the watch restarts."""
        try:
            return load_spec(self.project).state.url
        except DriftloopError:
            return None

    def run(self, *, until_idle: bool = False) -> None:
        """Watch until :attr:`stop` is set (or, with ``until_idle``, until a pass finds
        nothing to do and no file is settling)."""
        self.layout.raw.mkdir(parents=True, exist_ok=True)
        lease = Lease(self.layout.state_db, url=self._state_url())
        lease.acquire()
        observer = self._observe()
        try:
            self._consume()
            while not self.stop.is_set() and not lease.lost.is_set():
                self._wake.clear()
                result = self._pass()
                busy = result is None or result.progressed or result.pending
                self._monitor_if_due()
                if until_idle and result is not None and not busy:
                    return
                self._wake.wait(self._pause(result))
        finally:
            if observer is not None:
                observer.stop()
            if self.consumer is not None:
                self.consumer.stop()
            lease.release()

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        """Stop after the current pass (from a signal handler or another thread)."""
        self.stop.set()
        self._wake.set()

    def _pass(self) -> RunResult | None:
        started = time.perf_counter()
        since = time.monotonic()  # the consumer's clock: messages before this can settle
        try:
            result = run_pass(self.project, wait=False, backoff=True, complete=dict(self.complete))
            self._settle(since)
        except DriftloopError as exc:
            self._failed(first_line(exc))
            return None
        except Exception as exc:  # the loop outlives any one pass
            log.exception("a pass failed")
            self._failed(f"{type(exc).__name__}: {first_line(exc)}")
            return None
        self.state.passes += 1
        self.state.last_pass_seconds = time.perf_counter() - started
        self.state.last_error = None
        new_unmatched = [u for u in result.unmatched if u["path"] not in self.state.unmatched]
        self.state.unmatched = [u["path"] for u in result.unmatched]
        for item in new_unmatched:
            log.warning(
                "unmatched: %s %s",
                shown(item["path"]),
                item.get("problem")
                or f"does not match source {item['source']}'s pattern {item['pattern']!r}",
            )
        if result.progressed:
            self.state.last_work = f"{self.clock():%H:%M:%S} {_summary(result)}"
        self._preload(result)
        new_changed = [c for c in result.ingest.changed if c not in self._changed]
        self._changed = set(result.ingest.changed)  # told once (ingest logged each)
        if (result.progressed or new_unmatched or new_changed) and self.on_pass is not None:
            self.on_pass(result)
        self._status()
        return result

    def _preload(self, result: RunResult) -> None:
        """A version the gate just promoted is read into this process in the background
        (off the path: the next batch's check against it starts with the model loaded)."""
        for report in result.reports:
            if report.stage != "promote" or report.outcome != "ran":
                continue
            decision = (report.manifest or {}).get("decision") or {}
            if decision.get("decision") == "promoted":
                from driftloop.monitoring.run import preload_champion

                threading.Thread(
                    target=preload_champion,
                    args=(self.project, str(decision["version"])),
                    name="driftloop-preload",
                    daemon=True,
                ).start()

    def _failed(self, message: str) -> None:
        if message != self.state.last_error:
            log.error("pass failed: %s", message)
        self.state.last_error = message
        self._status()

    def _pause(self, result: RunResult | None) -> float:
        """How long to sleep unless a file lands: soon while files settle or stages wait."""
        if result is None:
            return max(self.interval, 5.0)  # a broken spec: do not spin
        if result.ingest.still_writing or any(r.outcome == "waiting" for r in result.reports):
            return min(self.interval, 0.5)
        if self.consumer is not None:
            # The queue wakes the loop; the timer is the reconciling listing (and the
            # scheduled monitoring's clock).
            pause = max(self.interval, self._listing_seconds)
            if self.state.next_monitor is not None:
                due = (self.state.next_monitor - self.clock()).total_seconds()
                pause = min(pause, max(self.interval, due))
            return pause
        if self.state.notifications == "watchdog":
            # The OS wakes the loop when a file lands; the timer is only a safety net (and
            # the scheduled monitoring's clock), so an idle project costs next to nothing.
            return max(self.interval, IDLE_SECONDS)
        return self.interval

    def _monitor_if_due(self) -> None:
        """The prediction log against the champion, on monitoring.schedule_minutes."""
        try:
            spec = load_spec(self.project)
        except DriftloopError:
            return
        minutes = spec.monitoring.schedule_minutes
        if minutes is None or not spec.model.enabled:
            return
        now = self.clock()
        if self.state.next_monitor is not None and now < self.state.next_monitor:
            return
        self.state.next_monitor = now + timedelta(minutes=minutes)
        from driftloop.core.logparts import any_parts

        try:
            served = any_parts(self.layout.predictions)
        except DriftloopError as exc:  # the bucket did not answer: the next tick asks again
            log.warning("scheduled monitoring: %s", first_line(exc))
            return
        if not served:
            return  # nothing served yet
        try:
            from driftloop.monitoring.run import monitor

            result = monitor(self.project, now=now)
        except NothingToMonitorError as exc:  # a quiet window: nothing wrong
            log.info("scheduled monitoring: nothing to monitor: %s", first_line(exc))
            return
        except DriftloopError as exc:
            log.warning("scheduled monitoring: %s", first_line(exc))
            return
        except Exception as exc:
            log.exception("scheduled monitoring failed")
            self.state.last_error = f"monitoring: {type(exc).__name__}: {first_line(exc)}"
            return
        summary = result.report["summary"]
        messages = "; ".join(summary["messages"])
        self.state.last_work = f"{now:%H:%M:%S} monitored the prediction log: {messages}"
        self._status()
        if summary["drift_detected"] or summary["performance_degraded"]:
            # the retrain policy acts on it (planner): the next pass now, not after the pause
            self._wake.set()

    def _observe(self) -> Subscription | None:
        """Notifications from the raw store that wake the loop when anything changes under
        data/raw; a file the store reports complete is remembered, so ingest takes it at
        once."""
        raw = self.layout.relative(self.layout.raw)
        wake = self._wake
        complete = self.complete

        def changed(obj: RawObject | None) -> None:
            if obj is not None:
                complete[obj.key] = obj.seen
            wake.set()

        try:
            return raw_store(raw, self.project).watch(raw, changed)
        except Exception as exc:  # no inotify watches left, an exotic file system, ...
            log.warning(
                "file notifications unavailable (%s); polling every %.1fs", exc, self.interval
            )
            self.state.notifications = f"polling every {self.interval:g}s"
            return None

    def _consume(self) -> None:
        """Start the SQS consumer when the spec sets ``ingest.events`` (a queue that does
        not exist or refuses the credentials raises :class:`EventQueueError`)."""
        try:
            spec = load_spec(self.project)
        except DriftloopError:
            return  # a broken spec: the passes report it; restart once it is fixed
        if spec.ingest.events is None:
            return
        from driftloop.core.sqs import EventConsumer, queue_name, source_matcher

        self._storage = spec.storage.settings()
        consumer = EventConsumer(
            spec.ingest.events,
            matches=source_matcher(spec),
            on_hint=self._hinted,
            region=spec.storage.region,
            profile=spec.storage.profile,
        )
        consumer.start()
        self.consumer = consumer
        self._listing_seconds = spec.ingest.events.listing_seconds
        self.state.notifications = (
            f"sqs {queue_name(spec.ingest.events.queue)} + listing every "
            f"{spec.ingest.events.listing_seconds:g}s"
        )

    def _hinted(self, events: tuple[S3Event, ...]) -> None:
        """A message named objects a source matches (the consumer's thread): an object
        that is there is complete (an S3 put is atomic), so ingest need not wait for it."""
        for event in events:
            if event.kind != "created":
                continue
            try:
                obj = raw_store(event.url, self.project, storage=self._storage).stat(event.url)
            except Exception:  # gone already, or no store for it: the pass will see
                continue
            self.complete[obj.key] = obj.seen
        self._wake.set()

    def _settle(self, since: float) -> None:
        """Delete the queue's messages whose objects the ledger now holds (or that are
        gone): only after the commit, so a crash before it leaves the message to return."""
        consumer = self.consumer
        if consumer is None or not consumer.held():
            return
        spec = load_spec(self.project)
        from driftloop.core.state import StateDB

        with StateDB(self.layout.state_db, url=spec.state.url) as db:
            consumer.settle(lambda event: resolved(event, spec, self.project, db), since=since)

    def _status(self) -> None:
        if self.on_status is not None:
            self.on_status(self.state)


def _summary(result: RunResult) -> str:
    """A pass in one line: what arrived and what ran."""
    parts = []
    if result.ingest.batch is not None:
        parts.append(
            f"batch {result.ingest.batch.batch_id} ({len(result.ingest.new_files)} file(s))"
        )
    ran = [r for r in result.reports if r.outcome in ("ran", "failed")]
    for r in ran:
        if r.stage == "train" and r.outcome == "ran":
            parts.append(f"trained v{r.manifest['version']}")
        elif r.stage == "promote" and r.outcome == "ran":
            d = r.manifest["decision"]
            parts.append(f"v{r.manifest['version']} {d['decision']}")
        elif r.stage == "monitor" and r.outcome == "ran":
            s = r.manifest["summary"]
            flags = [k for k in ("drift_detected", "performance_degraded") if s[k]]
            parts.append(f"checked {r.batch_id[:15]}: {', '.join(flags) or 'no drift'}")
        else:
            parts.append(f"{r.stage} {r.outcome}")
    return "; ".join(parts) or "nothing new"


def resolved(event: S3Event, spec: Spec, project: Path, db: StateDB) -> bool:
    """Whether a pass has done what an event asked: the ledger took content under the
    object's URL (this content, or earlier content it reports as changed in place), or the
    ledger holds the object's content under another name (a re-upload), or the object is
    gone (a removal, or a put removed since: nothing to take)."""
    if db.raw_file_at(event.url) is not None:
        return True
    try:
        obj = raw_store(event.url, project, storage=spec.storage.settings()).stat(event.url)
    except FileNotFoundError:
        return True
    sha = db.known_sighting(obj.key, obj.size, obj.mtime_ns)
    return sha is not None and db.raw_file(sha) is not None
