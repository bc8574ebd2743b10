"""S3 event notifications as typed records: the three ways they reach an SQS queue.

A bucket tells of its objects in three shapes, all read here from one message body
(:func:`parse_body`), without any AWS client:

- S3 -> SQS: the body is S3's own JSON, a ``Records`` list; each record names the bucket,
  the key (URL-encoded the way a form is: ``+`` is a space, ``%XX`` a byte), the event
  (``ObjectCreated:Put``, ``ObjectRemoved:Delete``, ...), its time, and the object's size,
  ETag, version id and sequencer where S3 has them.
- S3 -> SNS -> SQS: the body is an SNS envelope (``Type: Notification``) whose ``Message`` is
  that same JSON as a string; with raw message delivery the body is S3's JSON itself.
- S3 -> EventBridge -> SQS: the body is an EventBridge event (``source: aws.s3``,
  ``detail-type: Object Created`` / ``Object Deleted``) with ``detail.bucket.name`` and
  ``detail.object.key``. Its key is taken as it is: AWS's documented example and moto both
  show it unencoded.

``s3:TestEvent`` (what S3 sends when a notification is configured) parses to no records and
``test=True``. A body that is not JSON, or JSON that has none of these shapes, is
:class:`NotAnS3EventError` (the consumer reports it and deletes it); a body that has an S3 shape
but a broken record is :class:`MalformedS3EventError` (reported and left on the queue).

Events are hints: they wake a pass, and the ingest ledger decides. :class:`LatestEvents`
keeps, per object, the newest event seen, so an event older than that one is ignored: by
``sequencer`` where both have one (S3's hex counter per key, compared as numbers), else by
event time. Two events that compare equal (moto gives a multipart upload both an
``ObjectCreated:Put`` and an ``ObjectCreated:CompleteMultipartUpload`` with one time) are
both taken: the second finds the ledger has the file.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

Shape = Literal["s3", "sns", "eventbridge"]
Kind = Literal["created", "removed", "other"]


class NotAnS3EventError(ValueError):
    """A message body that is clearly not an S3 event notification (safe to delete)."""


class MalformedS3EventError(ValueError):
    """A body shaped like an S3 notification with a record that cannot be read (kept)."""


@dataclass(frozen=True)
class S3Event:
    """One object's event, with its key decoded."""

    bucket: str
    key: str
    name: str  # ObjectCreated:Put, ObjectRemoved:Delete, Object Created, ...
    time: datetime
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    shape: Shape = "s3"

    @property
    def url(self) -> str:
        """The object's URL, ``s3://bucket/key``: what the ingest ledger records."""
        return f"s3://{self.bucket}/{self.key}"

    @property
    def kind(self) -> Kind:
        name = self.name.lower().replace(" ", "")
        if name.startswith("objectcreated"):
            return "created"
        if name.startswith(("objectremoved", "objectdeleted", "lifecycleexpiration")):
            return "removed"
        return "other"


@dataclass(frozen=True)
class ParsedBody:
    """What one message body holds."""

    shape: Shape
    events: tuple[S3Event, ...] = ()
    test: bool = False  # s3:TestEvent: nothing to do


def parse_body(body: str) -> ParsedBody:
    """The S3 events in an SQS message body, whichever of the three shapes it has."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise NotAnS3EventError(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise NotAnS3EventError(f"the body is JSON {type(data).__name__}, not an object")
    if data.get("Type") == "Notification" and "TopicArn" in data:  # an SNS envelope
        message = data.get("Message")
        if not isinstance(message, str):
            raise NotAnS3EventError("an SNS notification without a Message string")
        try:
            inner = parse_body(message)
        except NotAnS3EventError as exc:
            why = f"an SNS notification whose Message is not an S3 event: {exc}"
            raise NotAnS3EventError(why) from None
        return ParsedBody("sns", _reshape(inner.events, "sns"), inner.test)
    if data.get("Event") == "s3:TestEvent":
        return ParsedBody("s3", test=True)
    if "Records" in data:
        return ParsedBody("s3", tuple(_records(data["Records"])))
    if data.get("source") == "aws.s3" and "detail" in data:
        return _eventbridge(data)
    raise NotAnS3EventError(
        "JSON without Records (S3 -> SQS), an SNS Notification envelope, an s3:TestEvent "
        f"or an aws.s3 EventBridge event; its keys: {sorted(data)[:8]}"
    )


def _reshape(events: Iterable[S3Event], shape: Shape) -> tuple[S3Event, ...]:
    return tuple(dataclasses.replace(e, shape=shape) for e in events)


def _records(records: Any) -> list[S3Event]:
    if not isinstance(records, list):
        raise MalformedS3EventError("Records is not a list")
    found = []
    for i, record in enumerate(records):
        where = f"Records[{i}]"
        if not isinstance(record, dict):
            raise MalformedS3EventError(f"{where} is not an object")
        if record.get("eventSource") not in ("aws:s3", None):
            raise NotAnS3EventError(f"{where} has eventSource {record.get('eventSource')!r}")
        s3 = _field(record, "s3", dict, where)
        bucket = _field(_field(s3, "bucket", dict, f"{where}.s3"), "name", str, f"{where}.s3")
        obj = _field(s3, "object", dict, f"{where}.s3")
        found.append(
            S3Event(
                bucket=bucket,
                key=unquote_plus(_field(obj, "key", str, f"{where}.s3.object")),
                name=_field(record, "eventName", str, where),
                time=_time(_field(record, "eventTime", str, where), where),
                size=_int(obj.get("size")),
                etag=_text(obj.get("eTag")),
                version_id=_version(obj.get("versionId")),
                sequencer=_text(obj.get("sequencer")),
            )
        )
    return found


def _eventbridge(data: dict[str, Any]) -> ParsedBody:
    detail = _field(data, "detail", dict, "the EventBridge event")
    where = "detail"
    obj = _field(detail, "object", dict, where)
    event = S3Event(
        bucket=_field(_field(detail, "bucket", dict, where), "name", str, f"{where}.bucket"),
        key=_field(obj, "key", str, f"{where}.object"),
        name=_field(data, "detail-type", str, "the EventBridge event"),
        time=_time(_field(data, "time", str, "the EventBridge event"), "time"),
        size=_int(obj.get("size")),
        etag=_text(obj.get("etag", obj.get("eTag"))),
        version_id=_version(obj.get("version-id")),
        sequencer=_text(obj.get("sequencer")),
        shape="eventbridge",
    )
    return ParsedBody("eventbridge", (event,))


def _field(data: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise MalformedS3EventError(f"{where}.{name} is missing or not a {kind.__name__}")
    return value


def _time(text: str, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedS3EventError(f"{where}: event time {text!r} is not ISO 8601") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return str(value).strip('"') if value not in (None, "") else None


def _version(value: Any) -> str | None:
    """A version id; S3 writes ``null`` (the string) for an unversioned bucket."""
    text = _text(value)
    return None if text in (None, "null") else text


def sequencer_order(a: str, b: str) -> int:
    """-1, 0 or 1 as sequencer ``a`` is older than, as old as or newer than ``b``: S3's
    sequencers of one key are hex numbers of varying length (pad, then compare)."""
    try:
        x, y = int(a, 16), int(b, 16)
    except ValueError:
        width = max(len(a), len(b))
        x2, y2 = a.rjust(width, "0"), b.rjust(width, "0")
        return (x2 > y2) - (x2 < y2)
    return (x > y) - (x < y)


def older(event: S3Event, than: S3Event) -> bool:
    """True when ``event`` happened before ``than`` (same object): by sequencer where both
    carry one, else by event time. Equal is not older."""
    if event.sequencer and than.sequencer:
        return sequencer_order(event.sequencer, than.sequencer) < 0
    return event.time < than.time


@dataclass
class LatestEvents:
    """The newest event seen per object URL (bounded: the oldest entries are forgotten,
    which only means an old event is taken as a hint again, and the ledger decides)."""

    limit: int = 100_000
    _latest: OrderedDict[str, S3Event] = field(default_factory=OrderedDict)

    def stale(self, event: S3Event) -> bool:
        """Whether ``event`` is older than the one recorded for its object; otherwise it
        becomes the recorded one."""
        seen = self._latest.get(event.url)
        if seen is not None and older(event, seen):
            return True
        self._latest[event.url] = event
        self._latest.move_to_end(event.url)
        while len(self._latest) > self.limit:
            self._latest.popitem(last=False)
        return False


Verdict = Literal["wanted", "test", "unmatched", "stale", "other"]


def triage(
    parsed: ParsedBody, matches: Callable[[str], bool], latest: LatestEvents
) -> list[tuple[S3Event | None, Verdict]]:
    """Each event of a body with what to do about it: ``wanted`` (a created or removed object
    a source's glob matches: a pass must look), or why it is ignored (``test``, ``unmatched``
    (no source's glob matches its URL, e.g. a filtered suffix), ``stale``, ``other`` (an
    event that does not change content: tags, ACLs, restores))."""
    if parsed.test:
        return [(None, "test")]
    out: list[tuple[S3Event | None, Verdict]] = []
    for event in parsed.events:
        if event.kind == "other":
            out.append((event, "other"))
        elif not matches(event.url):
            out.append((event, "unmatched"))
        elif latest.stale(event):
            out.append((event, "stale"))
        else:
            out.append((event, "wanted"))
    return out
