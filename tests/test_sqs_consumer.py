"""The SQS consumer of ``ingest.events`` on the real moto server: messages are held until the
ingest ledger has committed their objects, then deleted; what names nothing to do is deleted
at once; poison is reported and never stops it; a missing queue or missing credentials are
one clear error."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from driftloop.core.errors import EventQueueError
from driftloop.core.s3events import S3Event
from driftloop.core.spec import EventsSpec
from driftloop.core.sqs import EventConsumer
from driftloop.core.state import RawFile, StateDB
from tests.fixtures.moto import S3Env
from tests.s3_notifications import in_queue, receive, to_sqs

GUARD = 60.0  # seconds: a hang guard for events that arrive, never a timing assertion


class Hints:
    """What the consumer woke the loop with (its real callback, recorded)."""

    def __init__(self) -> None:
        self.events: list[S3Event] = []
        self.arrived = threading.Event()

    def __call__(self, events: tuple[S3Event, ...]) -> None:
        self.events += events
        self.arrived.set()


def _consumer(env: S3Env, url: str, hints: Hints, **spec: object) -> EventConsumer:
    events = EventsSpec.model_validate({"queue": url, **spec})
    prefix = f"s3://{env.bucket}/raw/"
    return EventConsumer(
        events, matches=lambda u: u.startswith(prefix) and u.endswith(".csv"), on_hint=hints
    )


def _drain(consumer: EventConsumer, hints: Hints, wanted: int) -> None:
    """Long polls until ``wanted`` objects were hinted (the TestEvent is deleted on the way)."""
    for _ in range(int(GUARD)):
        if len(hints.events) >= wanted:
            return
        consumer.receive_once(wait_seconds=1)
    raise AssertionError(f"{len(hints.events)} of {wanted} hints arrived")


def _take(db: StateDB, url: str, content: bytes, batch: str = "b1") -> None:
    """The ledger's commit of one object (what ingest does for a new file)."""
    sha = hashlib.sha256(content).hexdigest()
    db.create_batch(batch, [RawFile(sha, "orders", url, len(content), batch)])


def _in_ledger(db: StateDB):  # type: ignore[no-untyped-def]
    return lambda event: db.raw_file_at(event.url) is not None


def test_a_message_is_deleted_only_after_the_ledger_commits_its_object(
    s3_env: S3Env, tmp_path: Path
) -> None:
    url = to_sqs(s3_env)
    hints = Hints()
    consumer = _consumer(s3_env, url, hints)
    s3_env.put("raw/a.csv", b"x\n1\n")
    _drain(consumer, hints, 1)
    (event,) = hints.events
    assert event.url == s3_env.url("raw/a.csv")
    assert consumer.stats.counts["test"] == 1  # the TestEvent: deleted at once
    assert in_queue(s3_env, url) == (0, 1)  # the object's message: held, invisible
    with StateDB(tmp_path / "state.db") as db:
        # a pass that started before the message arrived cannot have seen its object
        assert consumer.settle(lambda e: True, since=consumer.held()[0].received - 1) == 0
        after = consumer.held()[0].received + 1
        assert consumer.settle(_in_ledger(db), since=after) == 0  # not committed yet
        assert in_queue(s3_env, url) == (0, 1)
        assert consumer.extend() == 1  # still held: its invisibility is renewed
        _take(db, event.url, b"x\n1\n")
        assert consumer.settle(_in_ledger(db), since=after) == 1
    assert in_queue(s3_env, url) == (0, 0)
    assert consumer.held() == []


def test_a_message_back_after_a_crash_is_settled_by_the_next_consumer(
    s3_env: S3Env, tmp_path: Path
) -> None:
    url = to_sqs(s3_env)
    first_hints, second_hints = Hints(), Hints()
    crashed = _consumer(s3_env, url, first_hints)
    s3_env.put("raw/a.csv", b"x\n1\n")
    _drain(crashed, first_hints, 1)
    (held,) = crashed.held()
    # the process dies before the ledger's commit: nothing deletes the message, and its
    # visibility timeout runs out (made to run out now, through the real API)
    s3_env.client("sqs").change_message_visibility(
        QueueUrl=url, ReceiptHandle=held.receipt, VisibilityTimeout=0
    )
    restarted = _consumer(s3_env, url, second_hints)
    _drain(restarted, second_hints, 1)
    assert second_hints.events == first_hints.events  # the same object, told again
    with StateDB(tmp_path / "state.db") as db:
        _take(db, second_hints.events[0].url, b"x\n1\n")
        since = restarted.held()[0].received + 1
        assert restarted.settle(_in_ledger(db), since=since) == 1
        assert len(db.batches()) == 1
    assert in_queue(s3_env, url) == (0, 0)


def test_duplicated_messages_are_both_deleted_and_change_nothing(
    s3_env: S3Env, tmp_path: Path
) -> None:
    url = to_sqs(s3_env)
    s3_env.put("raw/a.csv", b"x\n1\n")
    test_event, put = receive(s3_env, url, 2)
    sqs = s3_env.client("sqs")
    for message in (test_event, put):
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    sqs.send_message(QueueUrl=url, MessageBody=put["Body"])  # at-least-once: the same
    sqs.send_message(QueueUrl=url, MessageBody=put["Body"])  # notification twice
    hints = Hints()
    consumer = _consumer(s3_env, url, hints)
    _drain(consumer, hints, 2)
    assert len(consumer.held()) == 2 and hints.events[0] == hints.events[1]
    with StateDB(tmp_path / "state.db") as db:
        _take(db, hints.events[0].url, b"x\n1\n")
        since = max(h.received for h in consumer.held()) + 1
        assert consumer.settle(_in_ledger(db), since=since) == 2
        assert [len(db.batch_files(b.batch_id)) for b in db.batches()] == [1]
    assert in_queue(s3_env, url) == (0, 0)


def test_messages_that_name_nothing_to_do_are_deleted_at_once(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    s3_env.put("raw/a.json", b"{}")  # a suffix no source matches
    s3_env.put("elsewhere/a.csv", b"x\n")  # a prefix no source matches
    s3_env.put("raw/a.csv", b"x\n1\n")
    hints = Hints()
    consumer = _consumer(s3_env, url, hints)
    _drain(consumer, hints, 1)
    assert consumer.stats.counts["unmatched"] == 2 and consumer.stats.counts["test"] == 1
    assert in_queue(s3_env, url) == (0, 1)  # only the .csv's message is held


def test_poison_is_reported_and_the_loop_goes_on(
    s3_env: S3Env, caplog: pytest.LogCaptureFixture
) -> None:
    url = to_sqs(s3_env)
    receive(s3_env, url, 1)  # the TestEvent, left in flight (not ours to delete here)
    sqs = s3_env.client("sqs")
    garbage = sqs.send_message(QueueUrl=url, MessageBody="definitely not json")["MessageId"]
    broken = json.dumps({"Records": [{"eventSource": "aws:s3", "s3": {"object": {}}}]})
    kept = sqs.send_message(QueueUrl=url, MessageBody=broken)["MessageId"]
    s3_env.put("raw/a.csv", b"x\n1\n")
    hints = Hints()
    consumer = _consumer(s3_env, url, hints)
    _drain(consumer, hints, 1)  # the good message behind the poison still arrives
    assert consumer.stats.counts["not_s3"] == 1 and consumer.stats.counts["malformed"] == 1
    text = caplog.text
    assert garbage in text and "is not an S3 event notification" in text and "deleted" in text
    assert kept in text and "left on the queue" in text
    assert url.rsplit("/", 1)[-1] in text  # the queue is named
    # in flight: the TestEvent received above, the malformed one (left for a redrive
    # policy) and the held .csv message; the garbage is gone
    assert in_queue(s3_env, url) == (0, 3)


def test_a_message_held_too_long_goes_back_to_the_queue(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    hints = Hints()
    now = [1000.0]
    consumer = _consumer(s3_env, url, hints, hold_seconds=60)
    consumer.clock = lambda: now[0]
    s3_env.put("raw/a.csv", b"x\n1\n")
    _drain(consumer, hints, 1)
    now[0] += 61
    assert consumer.settle(lambda e: False, since=now[0]) == 0
    assert consumer.held() == [] and consumer.stats.counts["released"] == 1
    assert in_queue(s3_env, url) == (0, 1)  # not deleted: it returns after its timeout


def test_the_polling_thread_wakes_the_loop(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    hints = Hints()
    consumer = _consumer(s3_env, url, hints, wait_seconds=1)
    consumer.start()
    try:
        s3_env.put("raw/a.csv", b"x\n1\n")
        assert hints.arrived.wait(GUARD)
    finally:
        consumer.stop()
    assert [e.url for e in hints.events] == [s3_env.url("raw/a.csv")]


def test_a_queue_that_does_not_exist_is_one_clear_error(s3_env: S3Env) -> None:
    consumer = _consumer(s3_env, "sqs://no-such-queue-here", Hints())
    with pytest.raises(EventQueueError) as caught:
        consumer.start()
    message = str(caught.value)
    assert "'no-such-queue-here'" in message and "does not exist" in message
    assert "create-queue" in message and "ingest.events" in message


def test_missing_credentials_are_one_clear_error(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = to_sqs(s3_env)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    consumer = _consumer(s3_env, url, Hints())
    with pytest.raises(EventQueueError) as caught:
        consumer.start()
    message = str(caught.value)
    assert url.rsplit("/", 1)[-1] in message and "no AWS credentials" in message
    assert "AWS_ACCESS_KEY_ID" in message


def test_refused_credentials_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that checks credentials (moto with its IAM checks on) refuses unknown keys."""
    from tests.fixtures.moto import SECRET_KEY, start_moto

    server = start_moto(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        events = EventsSpec.model_validate({"queue": "sqs://raw-events"})
        consumer = EventConsumer(events, matches=lambda u: True, on_hint=Hints())
        with pytest.raises(EventQueueError) as caught:
            consumer.start()
    finally:
        server.stop()
    message = str(caught.value)
    assert "'raw-events'" in message and "cannot be read" in message
    assert "InvalidClientTokenId" in message and "sqs:ReceiveMessage" in message
    assert SECRET_KEY not in message


def test_the_spec_takes_a_queue_alone_or_a_section() -> None:
    from driftloop.core.spec import IngestSpec

    alone = IngestSpec.model_validate({"events": "sqs://raw-events"})
    assert alone.events is not None and alone.events.queue == "sqs://raw-events"
    assert alone.events.listing_seconds == 300.0
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events"
    section = IngestSpec.model_validate({"events": {"queue": url, "listing_seconds": 60}})
    assert section.events is not None and section.events.listing_seconds == 60
    with pytest.raises(ValueError, match="is not an SQS queue: write sqs://<queue name>"):
        IngestSpec.model_validate({"events": "s3://bucket/raw"})
    with pytest.raises(ValueError, match="Extra inputs"):
        IngestSpec.model_validate({"events": {"queue": "sqs://q", "listen_seconds": 5}})


def test_stopping_puts_held_messages_back_at_once(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    hints = Hints()
    consumer = _consumer(s3_env, url, hints, wait_seconds=1)
    consumer.start()
    s3_env.put("raw/a.csv", b"x\n1\n")
    assert hints.arrived.wait(GUARD)
    consumer.stop()
    assert consumer.held() == [] and consumer.stats.counts["put_back"] >= 1
    # visible again for the next consumer, without waiting out the visibility timeout
    again = Hints()
    _drain(_consumer(s3_env, url, again), again, 1)
    assert again.events == hints.events
