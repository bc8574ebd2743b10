"""``driftloop watch`` woken by S3 event notifications on the real moto server: each delivery
shape end to end, duplicates and redeliveries, a lost notification found by the listing, a
queue that does not exist."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from driftloop.core.layout import Layout
from driftloop.core.state import StateDB
from driftloop.orchestration.loop import RunResult
from driftloop.orchestration.watch import Watcher
from tests.fixtures.moto import ACCESS_KEY, SECRET_KEY, S3Env
from tests.s3_notifications import in_queue, receive, to_eventbridge, to_sns, to_sqs
from tests.test_s3_sources import cli, everything_written, s3_shop_project, shop_week

GUARD = 300.0  # seconds: a hang guard for what the test waits for, never a timing assertion


def _until(what: str, condition: Callable[[], bool]) -> None:
    """Wait for a condition the loop brings about (polled; the guard only stops a hang)."""
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def _project(tmp_path: Path, s3: S3Env, queue: str, listing_seconds: float) -> Path:
    project = s3_shop_project(tmp_path, s3)
    path = project / "driftloop.yaml"
    text = path.read_text()
    events = (
        f"  events: {{queue: '{queue}', listing_seconds: {listing_seconds}, wait_seconds: 1}}\n"
    )
    text = text.replace("ingest:\n", "ingest:\n" + events, 1)
    text = text.replace("model:\n", "model:\n  enabled: false\n", 1)  # prep and features only
    path.write_text(text)
    return project


def _ledger(project: Path) -> list[str]:
    """Every object the ledger took, once per time it was taken."""
    with StateDB(Layout(project).state_db) as db:
        return sorted(f.path for files in db.files_by_batch().values() for f in files)


@contextmanager
def _watching(project: Path) -> Iterator[Watcher]:
    """``driftloop watch``'s loop in a thread, stopped (between passes) after the block."""
    passes: list[RunResult] = []
    watcher = Watcher(project, interval=0.2, on_pass=passes.append)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="watch", daemon=True)
    thread.start()
    try:
        _until("the first pass", lambda: watcher.state.passes >= 1 or bool(failed))
        assert not failed, failed
        yield watcher
    finally:
        watcher.request_stop()
        thread.join(GUARD)
    assert not failed, failed
    assert watcher.state.last_error is None, watcher.state.last_error


SHAPES = {
    "s3-sqs": to_sqs,
    "s3-sns-sqs": lambda env: to_sns(env)[0],
    "s3-sns-raw-sqs": lambda env: to_sns(env, raw=True)[0],
    "s3-eventbridge-sqs": to_eventbridge,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_uploaded_object_is_ingested_once_on_its_notification(
    shape: str, s3_env: S3Env, tmp_path: Path
) -> None:
    queue = SHAPES[shape](s3_env)
    # the listing would come in an hour: only the notification can wake the loop
    project = _project(tmp_path, s3_env, queue, listing_seconds=3600)
    week = shop_week(tmp_path, 1)
    with _watching(project) as watcher:
        assert watcher.consumer is not None
        assert _ledger(project) == []
        s3_env.put("raw/customers/customers 0001.csv", week["customers"])  # a space
        s3_env.put("raw/orders/orders+0001.csv", week["orders"])  # a plus
        wanted = sorted(
            [
                s3_env.url("raw/customers/customers 0001.csv"),
                s3_env.url("raw/orders/orders+0001.csv"),
            ]
        )
        _until("both objects in the ledger", lambda: _ledger(project) == wanted)
        _until("the queue emptied", lambda: in_queue(s3_env, queue) == (0, 0))
        counts = watcher.consumer.stats.counts
        # the consumer counts a deletion once S3's answer is back: the queue can be seen
        # empty a moment before (a busy machine made that moment long enough to see)
        _until("both messages counted as settled", lambda: counts["settled"] >= 2)
        assert counts["wanted"] >= 2
        assert counts["test"] == (0 if shape == "s3-eventbridge-sqs" else 1)  # EB sends none
        assert counts["not_s3"] == 0 and counts["malformed"] == 0
    assert _ledger(project) == wanted  # each once


def test_duplicated_and_redelivered_messages_change_nothing(s3_env: S3Env, tmp_path: Path) -> None:
    queue = to_sqs(s3_env)
    project = _project(tmp_path, s3_env, queue, listing_seconds=3600)
    week = shop_week(tmp_path, 1)
    s3_env.put("raw/orders/orders-0001.csv", week["orders"])
    sqs = s3_env.client("sqs")
    messages = receive(s3_env, queue, 2)  # the TestEvent and the put, taken by "someone"
    for message in messages:  # ... who died: both come back (redelivered) ...
        sqs.change_message_visibility(
            QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    sqs.send_message(QueueUrl=queue, MessageBody=messages[1]["Body"])  # ... and a duplicate
    with _watching(project) as watcher:
        assert watcher.consumer is not None
        _until("the object in the ledger", lambda: len(_ledger(project)) == 1)
        _until("the queue emptied", lambda: in_queue(s3_env, queue) == (0, 0))
        assert watcher.consumer.stats.counts["wanted"] == 2  # the put, twice
        # a new message for the same object (the same bytes put again) changes nothing too
        s3_env.put("raw/orders/orders-0001.csv", week["orders"])
        _until("its message settled", lambda: watcher.consumer.stats.counts["settled"] >= 3)
        _until("the queue emptied again", lambda: in_queue(s3_env, queue) == (0, 0))
    assert _ledger(project) == [s3_env.url("raw/orders/orders-0001.csv")]


def test_a_lost_notification_is_found_by_the_periodic_listing(
    s3_env: S3Env, tmp_path: Path
) -> None:
    url, _ = (to_sqs(s3_env), None)
    s3_env.client().put_bucket_notification_configuration(  # notifications stop: all lost
        Bucket=s3_env.bucket, NotificationConfiguration={}
    )
    project = _project(tmp_path, s3_env, url, listing_seconds=1)
    week = shop_week(tmp_path, 1)
    with _watching(project) as watcher:
        assert watcher.consumer is not None
        s3_env.put("raw/orders/orders-0001.csv", week["orders"])
        _until("the listing found it", lambda: len(_ledger(project)) == 1)
        assert watcher.consumer.stats.counts["wanted"] == 0  # no notification told of it
        assert "listing every 1s" in watcher.state.notifications


def test_watch_refuses_a_queue_that_does_not_exist(s3_env: S3Env, tmp_path: Path) -> None:
    project = _project(tmp_path, s3_env, "sqs://no-such-queue", listing_seconds=60)
    result = cli("watch", "-p", str(project))
    assert result.returncode != 0
    line = " ".join((result.stdout + result.stderr).split())
    assert "'no-such-queue'" in line and "does not exist" in line and "create-queue" in line
    assert "Traceback" not in result.stderr
    assert SECRET_KEY not in everything_written(project, result.stdout, result.stderr)
    assert ACCESS_KEY not in result.stdout + result.stderr


@pytest.mark.slow
def test_up_serves_a_champion_trained_on_an_object_uploaded_to_the_bucket(
    s3_env: S3Env, tmp_path: Path
) -> None:
    """``driftloop up`` against a bucket: uploads are served by a new champion with no
    manual step (the loop woken by the queue, the server following the champion)."""
    import httpx

    from driftloop.serving.client import free_port
    from tests.helpers import write_spec
    from tests.test_lifecycle import SPEC, land
    from tests.test_watch import QUICK, start, wait_for

    queue = to_sqs(s3_env)
    project = tmp_path / "synth"
    spec = SPEC.replace("data/raw/s/*.csv", s3_env.url("raw/s/*.csv")).replace(
        "ingest: {settle_seconds: 0}",
        f"ingest: {{settle_seconds: 0, events: {{queue: '{queue}', listing_seconds: 3600, "
        "wait_seconds: 1}}",
    )
    write_spec(project, spec + QUICK)
    scratch = tmp_path / "scratch"

    def upload(name: str, seed: int, start_day: int) -> None:
        land(scratch, name, 600, seed=seed, start_day=start_day)
        s3_env.put(f"raw/s/{name}", (scratch / "data" / "raw" / "s" / name).read_bytes())

    port = free_port()
    log = tmp_path / "up.log"
    up = start("up", "-p", str(project), "--port", str(port), log=log)
    record = {"t": "2024-01-05 10:00:00", "x1": 0.3, "x2": -1.2, "c": "b"}

    def served(version: str) -> bool:
        try:
            answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=record, timeout=5)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json()["model"]["version"] == version

    def decisions() -> int:
        layout = Layout(project)
        if not layout.state_db.exists():
            return 0
        with StateDB(layout.state_db) as db:
            return db.last_event_id(("ModelPromoted", "PromotionRejected"))

    try:
        upload("week-1.csv", seed=1, start_day=0)
        wait_for(lambda: served("1"), 300, "v1 served", log)  # the first champion
        before = decisions()
        upload("week-2.csv", seed=2, start_day=5)
        wait_for(lambda: decisions() > before, 300, "the gate on the second upload", log)
        with StateDB(Layout(project).state_db) as db:
            last = db.last_event("ModelPromoted")
            versions = db.events_after(0, ("ModelRegistered",))
        assert last is not None and len(versions) == 2  # trained once per upload
        wait_for(lambda: served(str(last["version"])), 120, "the champion served", log)
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(120) == 0
    assert _ledger(project) == [s3_env.url("raw/s/week-1.csv"), s3_env.url("raw/s/week-2.csv")]
    assert in_queue(s3_env, queue) == (0, 0)
    assert SECRET_KEY not in everything_written(project, log.read_text())


def test_resolved_follows_the_ledger_and_the_bucket(s3_env: S3Env, tmp_path: Path) -> None:
    """When the watcher lets a message go: the ledger took the object (or its content under
    another key), or the object is gone; never while it is there and not taken."""
    import hashlib
    from datetime import UTC, datetime

    from driftloop.core.s3events import S3Event
    from driftloop.core.s3store import S3RawStore
    from driftloop.core.spec import load_spec
    from driftloop.core.state import RawFile
    from driftloop.orchestration.watch import resolved

    project = _project(tmp_path, s3_env, "sqs://unused", listing_seconds=60)
    spec = load_spec(project)

    def event(key: str) -> S3Event:
        return S3Event(s3_env.bucket, key, "ObjectCreated:Put", datetime.now(UTC))

    content = b"order_id\n1\n"
    s3_env.put("raw/orders/a.csv", content)
    s3_env.put("raw/orders/copy.csv", content)
    store = S3RawStore()
    with StateDB(Layout(project).state_db) as db:
        assert not resolved(event("raw/orders/a.csv"), spec, project, db)  # there, not taken
        assert resolved(event("raw/orders/gone.csv"), spec, project, db)  # nothing to take
        sha = hashlib.sha256(content).hexdigest()
        url = s3_env.url("raw/orders/a.csv")
        db.create_batch("b1", [RawFile(sha, "orders", url, len(content), "b1")])
        assert resolved(event("raw/orders/a.csv"), spec, project, db)  # committed
        assert not resolved(event("raw/orders/copy.csv"), spec, project, db)  # not looked at
        copy = store.stat(s3_env.url("raw/orders/copy.csv"))
        db.record_sighting(copy.key, copy.size, copy.mtime_ns, sha)  # ingest hashed it
        assert resolved(event("raw/orders/copy.csv"), spec, project, db)  # a re-upload


@pytest.mark.slow
def test_a_watcher_killed_mid_pass_loses_nothing_and_takes_nothing_twice(
    s3_env: S3Env, tmp_path: Path
) -> None:
    """kill -9 of ``driftloop watch`` once the ledger has the upload: whether or not its
    message was deleted yet, the restarted watcher ends with the object taken once and the
    queue empty (a message the dead one held comes back after its visibility timeout and
    finds the ledger's answer)."""
    import os

    from tests.test_watch import start, wait_for

    queue = to_sqs(s3_env)
    project = _project(tmp_path, s3_env, queue, listing_seconds=3600)
    path = project / "driftloop.yaml"
    path.write_text(
        path.read_text().replace("wait_seconds: 1}", "wait_seconds: 1, visibility_seconds: 10}")
    )
    week = shop_week(tmp_path, 1)
    first = start("watch", "-p", str(project), log=tmp_path / "first.log")
    try:
        s3_env.put("raw/customers/customers-0001.csv", week["customers"])
        s3_env.put("raw/orders/orders-0001.csv", week["orders"])
        wait_for(
            lambda: len(_ledger(project)) == 2, 120, "the ledger's commit", tmp_path / "first.log"
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(60)
    second = start("watch", "-p", str(project), log=tmp_path / "second.log")
    try:
        wait_for(
            lambda: in_queue(s3_env, queue) == (0, 0),
            120,
            "the queue emptied",
            tmp_path / "second.log",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(120) == 0
    assert _ledger(project) == [
        s3_env.url("raw/customers/customers-0001.csv"),
        s3_env.url("raw/orders/orders-0001.csv"),
    ]
