"""A long-polling SQS consumer of S3 event notifications (``ingest.events`` in the spec).

Events are hints. A message that names an object a source's glob matches wakes the loop
(``on_hint``) and is *held*: its visibility timeout is extended while it is held, and it is
deleted only after a pass that started after it arrived has left each of its objects
resolved (:meth:`EventConsumer.settle`; the caller says what resolved means: the ingest
ledger holds the object, or it is gone). A message is deleted at once when it names nothing
to do: an ``s3:TestEvent``, keys no source's glob matches (a filtered suffix), an event older
than the one recorded for its object, an event that does not change content. So a
redelivered or duplicated message changes nothing (the ledger has its files), a crash before
the ledger's commit leaves the message to come back after its visibility timeout, and a
message held longer than ``hold_seconds`` goes back to the queue, where a redrive policy can
count it.

A body that is clearly not an S3 event (not JSON, or JSON of another shape) is reported
with the queue and the message id and deleted; a body shaped like an S3 event with a record
that cannot be read is reported and left on the queue. Neither stops the loop. boto3 is
imported when a consumer starts.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driftloop.core.errors import EventQueueError
from driftloop.core.rawstore import glob_regex
from driftloop.core.s3events import (
    LatestEvents,
    MalformedS3EventError,
    NotAnS3EventError,
    S3Event,
    parse_body,
    triage,
)
from driftloop.core.storage import is_temporary

if TYPE_CHECKING:
    from driftloop.core.spec import EventsSpec, Spec

log = logging.getLogger(__name__)

BATCH = 10  # SQS's most messages per receive, delete or visibility change
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # after a failed receive (the loop goes on)
_MISSING = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue")
_REFUSED = (
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "InvalidSecurity",
)


def source_matcher(spec: Spec) -> Callable[[str], bool]:
    """Whether an object URL is one a source's glob matches (and not a temporary name)."""
    patterns = [glob_regex(s.path).fullmatch for s in spec.sources if "://" in s.path]

    def matches(url: str) -> bool:
        return not is_temporary(url) and any(p(url) for p in patterns)

    return matches


def queue_name(queue: str) -> str:
    """The queue's name, for messages (``sqs://raw-events`` or a URL's last segment)."""
    return queue.removeprefix("sqs://").rstrip("/").rsplit("/", 1)[-1]


def _region_of(url: str) -> str | None:
    found = re.match(r"https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", url)
    return found.group(1) if found else None


def sqs_client(queue: str, *, region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 SQS client: credentials, region and endpoint from the usual AWS environment
    (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SQS`` reach a local server); the region from
    the queue's URL when it names one, else the spec's ``storage.region``; the spec's
    ``storage.profile``. (``storage.endpoint_url`` is S3's, not SQS's.)"""
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise EventQueueError(
            f"ingest.events names the queue {queue_name(queue)!r}, and reading it needs boto3: "
            "pip install 'driftloop[s3]'"
        ) from None
    from driftloop.core.s3client import S3Settings, client

    region = (_region_of(queue) if queue.startswith("http") else None) or region
    # the factory S3 uses (one client per settings and environment, standard retries); the
    # long poll's 20 s wait stays under its read timeout
    return client(S3Settings(region=region, profile=profile), service="sqs")


def queue_error(queue: str, exc: BaseException) -> EventQueueError:
    """An AWS client's failure as one line that names the queue and the fix (the message
    never holds a credential: boto3's errors name codes and keys' ids, not secrets)."""
    name = queue_name(queue)
    where = f"the SQS queue {name!r} (ingest.events in driftloop.yaml)"
    kind = type(exc).__name__
    code, said, status = "", "", 0
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        said = str(response.get("Error", {}).get("Message", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    # a server may put the code in the message (moto answers the JSON protocol in XML)
    code = next((c for c in (*_MISSING, *_REFUSED) if c in said), code) if said else code
    if code in _MISSING:
        return EventQueueError(
            f"{where} does not exist in this account and region: create it (aws sqs "
            "create-queue --queue-name NAME) and point the bucket's notifications at it, or "
            "fix the name; AWS_DEFAULT_REGION and AWS_ENDPOINT_URL choose where it is looked up"
        )
    refused = code in _REFUSED or status == 403 or code == "403"
    if refused or kind in ("NoCredentialsError", "PartialCredentialsError"):
        why = f"AWS answered {code}" if code else "no AWS credentials were found"
        return EventQueueError(
            f"{where} cannot be read: {why}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) to credentials allowed sqs:ReceiveMessage, sqs:DeleteMessage "
            "and sqs:ChangeMessageVisibility on it"
        )
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return EventQueueError(
            f"{where} cannot be reached: {kind}. Check the network, or AWS_ENDPOINT_URL "
            "when the queue is on a local server"
        )
    detail = f"{code}: " if code else ""
    return EventQueueError(f"{where} failed: {kind}: {detail}{str(exc)[:300]}")


@dataclass
class Held:
    """A message whose objects a pass must resolve before it is deleted."""

    message_id: str
    receipt: str
    events: tuple[S3Event, ...]
    received: float  # time.monotonic() when it arrived


@dataclass
class ConsumerStats:
    """What the consumer has seen (``driftloop watch`` shows it; tests read it)."""

    counts: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None


class EventConsumer:
    """Long-polls one queue in a thread of its own; see the module docstring."""

    def __init__(
        self,
        events: EventsSpec,
        *,
        matches: Callable[[str], bool],
        on_hint: Callable[[tuple[S3Event, ...]], None],
        client: Any | None = None,
        region: str | None = None,
        profile: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = events
        self.queue = events.queue
        self.matches = matches
        self.on_hint = on_hint
        self.clock = clock
        self.stats = ConsumerStats()
        self.latest = LatestEvents()
        self._client = client
        self._region, self._profile = region, profile
        self._url: str | None = None
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the queue ----------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = sqs_client(self.queue, region=self._region, profile=self._profile)
        return self._client

    def url(self) -> str:
        """The queue's URL, looked up once; a missing queue or refused credentials raise
        :class:`EventQueueError` naming the queue and the fix."""
        if self._url is None:
            try:
                if self.queue.startswith("sqs://"):
                    answer = self.client.get_queue_url(QueueName=queue_name(self.queue))
                    url = str(answer["QueueUrl"])
                else:
                    url = self.queue
                self.client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            except EventQueueError:
                raise
            except Exception as exc:
                raise queue_error(self.queue, exc) from None
            self._url = url
        return self._url

    def start(self) -> None:
        """Check the queue, then poll it and keep held messages invisible, in threads."""
        self.url()
        for target, name in ((self._poll, "sqs-poll"), (self._heartbeat, "sqs-visibility")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop polling and put every held message back on the queue at once (visibility 0),
        for the next consumer. A long poll under way is not waited for: what it brings is
        put back the same way when it returns (the thread is a daemon)."""
        self._stop.set()
        for thread in self._threads:
            if thread.name == "sqs-visibility":
                thread.join(10.0)  # a hang guard: it wakes at once on the stop event
        with self._lock:
            held, self._held = list(self._held.values()), {}
        self._put_back([(h.message_id, h.receipt) for h in held])

    # -- receiving ----------------------------------------------------------------------

    def receive_once(self, wait_seconds: int | None = None) -> int:
        """One long poll; handles what it got and says how many messages that was."""
        answer = self.client.receive_message(
            QueueUrl=self.url(),
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=self.spec.wait_seconds if wait_seconds is None else wait_seconds,
            VisibilityTimeout=self.spec.visibility_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = answer.get("Messages", [])
        if self._stop.is_set():  # stopped during the long poll: not ours to handle
            self._put_back([(str(m.get("MessageId")), str(m["ReceiptHandle"])) for m in messages])
            return 0
        for message in messages:
            self.handle(message)
        return len(messages)

    def _poll(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.receive_once()
                failures = 0
                self.stats.last_error = None
            except Exception as exc:  # the network, a throttle, a deleted queue: go on
                error = queue_error(self.queue, exc)
                if str(error) != self.stats.last_error:
                    log.warning("%s; retrying", error)
                self.stats.last_error = str(error)
                self.stats.counts["receive_failed"] += 1
                self._stop.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1

    def handle(self, message: dict[str, Any]) -> None:
        """One received message: delete it now, hold it (and wake the loop), or leave it."""
        message_id = str(message.get("MessageId", "?"))
        receipt = str(message.get("ReceiptHandle", ""))
        self.stats.counts["received"] += 1
        try:
            parsed = parse_body(str(message.get("Body", "")))
        except NotAnS3EventError as exc:
            log.warning(
                "queue %s, message %s is not an S3 event notification (%s); deleted",
                queue_name(self.queue),
                message_id,
                exc,
            )
            self.stats.counts["not_s3"] += 1
            self._delete([(message_id, receipt)])
            return
        except MalformedS3EventError as exc:
            log.warning(
                "queue %s, message %s looks like an S3 event but cannot be read (%s); left "
                "on the queue (a redrive policy moves it to a dead-letter queue)",
                queue_name(self.queue),
                message_id,
                exc,
            )
            self.stats.counts["malformed"] += 1
            return
        verdicts = triage(parsed, self.matches, self.latest)
        wanted = tuple(e for e, v in verdicts if v == "wanted" and e is not None)
        for _, verdict in verdicts:
            self.stats.counts[verdict] += 1
        if not wanted:
            self._delete([(message_id, receipt)])
            return
        with self._lock:
            held = self._held.get(message_id)
            if held is not None:  # received again while held: the newer receipt counts
                held.receipt = receipt
            else:
                self._held[message_id] = Held(message_id, receipt, wanted, self.clock())
        self.on_hint(wanted)

    # -- settling -----------------------------------------------------------------------

    def held(self) -> list[Held]:
        with self._lock:
            return list(self._held.values())

    def settle(self, resolved: Callable[[S3Event], bool], *, since: float) -> int:
        """Delete each held message that arrived before ``since`` (the start of the pass
        just made, on this consumer's clock) whose every object ``resolved`` says is done;
        returns how many were deleted. A message held past ``hold_seconds`` is let go."""
        done, expired = [], []
        now = self.clock()
        for held in self.held():
            if held.received > since:
                continue  # the pass may have listed before this object landed
            try:
                finished = all(resolved(e) for e in held.events)
            except Exception as exc:  # a state database or store hiccup: ask again later
                log.warning("message %s cannot be settled yet: %s", held.message_id, exc)
                finished = False
            if finished:
                done.append(held)
            elif now - held.received > self.spec.hold_seconds:
                expired.append(held)
        with self._lock:
            for held in done + expired:
                self._held.pop(held.message_id, None)
        for held in expired:
            log.warning(
                "queue %s, message %s: %s not in the ledger after %.0fs; it goes back to the "
                "queue (the listing every %.0fs also finds the objects)",
                queue_name(self.queue),
                held.message_id,
                ", ".join(e.url for e in held.events),
                self.spec.hold_seconds,
                self.spec.listing_seconds,
            )
            self.stats.counts["released"] += 1
        deleted = self._delete([(h.message_id, h.receipt) for h in done])
        self.stats.counts["settled"] += deleted
        return deleted

    def _delete(self, messages: list[tuple[str, str]]) -> int:
        deleted = 0
        for chunk in _chunks(messages):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, (_, r) in enumerate(chunk)]
            try:
                answer = self.client.delete_message_batch(QueueUrl=self.url(), Entries=entries)
            except Exception as exc:  # it comes back and is settled again: nothing is lost
                log.warning("%s; the messages come back and are settled again", exc)
                continue
            for failed in answer.get("Failed", []):
                log.warning(
                    "queue %s, message %s was not deleted (%s); it comes back and changes nothing",
                    queue_name(self.queue),
                    chunk[int(failed["Id"])][0],
                    failed.get("Message") or failed.get("Code"),
                )
            deleted += len(answer.get("Successful", []))
        self.stats.counts["deleted"] += deleted
        return deleted

    def _put_back(self, messages: list[tuple[str, str]]) -> None:
        """Make messages visible again now (best effort: else after their timeout)."""
        for chunk in _chunks(messages):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
                for i, (_, r) in enumerate(chunk)
            ]
            try:
                self.client.change_message_visibility_batch(QueueUrl=self.url(), Entries=entries)
            except Exception as exc:
                log.warning("%s; the messages come back after their timeout", exc)
            self.stats.counts["put_back"] += len(chunk)

    def _heartbeat(self) -> None:
        """Keep held messages invisible while they are held (every third of the timeout)."""
        period = self.spec.visibility_seconds / 3.0
        while not self._stop.wait(period):
            self.extend()

    def extend(self) -> int:
        """Renew the visibility timeout of every held message; returns how many."""
        held = [(h.message_id, h.receipt) for h in self.held()]
        extended = 0
        for chunk in _chunks(held):
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": receipt,
                    "VisibilityTimeout": self.spec.visibility_seconds,
                }
                for i, (_, receipt) in enumerate(chunk)
            ]
            try:
                answer = self.client.change_message_visibility_batch(
                    QueueUrl=self.url(), Entries=entries
                )
            except Exception as exc:
                log.warning("%s", queue_error(self.queue, exc))
                continue
            extended += len(answer.get("Successful", []))
        self.stats.counts["extended"] += extended
        return extended


def _chunks(items: list[tuple[str, str]]) -> Iterable[list[tuple[str, str]]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]
