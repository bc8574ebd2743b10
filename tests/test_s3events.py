"""S3 event notifications parsed from what the real moto server delivers to SQS: directly,
through SNS (enveloped and raw) and through EventBridge; ordering, test events and
filtered keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from driftloop.core.s3events import (
    LatestEvents,
    MalformedS3EventError,
    NotAnS3EventError,
    ParsedBody,
    S3Event,
    parse_body,
    sequencer_order,
    triage,
)
from driftloop.core.spec import Spec
from driftloop.core.sqs import source_matcher
from tests.fixtures.moto import S3Env
from tests.s3_notifications import receive, to_eventbridge, to_sns, to_sqs

ODD_KEY = "raw/a b+c/é %.csv"  # a space, a plus, a slash, a non-ASCII letter, a percent


def _bodies(env: S3Env, url: str, count: int) -> list[ParsedBody]:
    return [parse_body(m["Body"]) for m in receive(env, url, count)]


def _events(parsed: list[ParsedBody]) -> list[S3Event]:
    return [e for p in parsed for e in p.events]


def test_s3_to_sqs_records_decode_the_key_and_carry_the_object(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    put = s3_env.put(ODD_KEY, "x,y\n1,2\n")
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key=ODD_KEY)
    parsed = _bodies(s3_env, url, 3)
    assert [p.test for p in parsed] == [True, False, False]  # configuring sends a TestEvent
    created, removed = _events(parsed)
    assert created.key == ODD_KEY and created.bucket == s3_env.bucket
    assert created.url == f"s3://{s3_env.bucket}/{ODD_KEY}"
    assert (created.name, created.kind, created.shape) == ("ObjectCreated:Put", "created", "s3")
    assert created.size == 8 and created.etag == put["ETag"].strip('"')
    assert created.time.tzinfo is not None
    assert abs((datetime.now(UTC) - created.time).total_seconds()) < 3600
    assert (removed.name, removed.kind, removed.key) == ("ObjectRemoved:Delete", "removed", ODD_KEY)
    # moto's records carry neither a version id nor a sequencer (AWS's do)
    assert created.version_id is None and created.sequencer is None


def test_sns_envelope_and_raw_delivery_give_the_same_events(s3_env: S3Env) -> None:
    enveloped, raw = to_sns(s3_env, also_raw=True)
    s3_env.put("raw/x+y z.csv", "x\n1\n")
    first, second = receive(s3_env, enveloped, 2)
    assert json.loads(second["Body"])["Type"] == "Notification"  # the envelope, as sent
    assert parse_body(first["Body"]).test and parse_body(first["Body"]).shape == "sns"
    (event,) = parse_body(second["Body"]).events
    assert (event.key, event.shape, event.kind) == ("raw/x+y z.csv", "sns", "created")
    by_raw = _bodies(s3_env, raw, 2)  # raw delivery: the body is S3's JSON itself
    assert by_raw[0].test and by_raw[0].shape == "s3"
    (same,) = _events(by_raw)
    assert (same.key, same.shape, same.etag) == ("raw/x+y z.csv", "s3", event.etag)


def test_eventbridge_events_name_the_object(s3_env: S3Env) -> None:
    url = to_eventbridge(s3_env)
    put = s3_env.put("raw/e v+1.csv", "x\n1\n")
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key="raw/e v+1.csv")
    created, removed = _events(_bodies(s3_env, url, 2))
    assert (created.shape, created.name, created.kind) == (
        "eventbridge",
        "Object Created",
        "created",
    )
    assert created.key == "raw/e v+1.csv"  # EventBridge's key is not encoded: '+' stays '+'
    assert created.etag == put["ETag"].strip('"') and created.size == 4
    assert created.version_id is None  # moto writes the string "null" for no version
    assert created.sequencer is not None
    assert removed.kind == "removed" and removed.name == "Object Deleted"


def test_multipart_upload_emits_two_events_both_taken(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    client = s3_env.client()
    upload = client.create_multipart_upload(Bucket=s3_env.bucket, Key="raw/big.csv")
    part = client.upload_part(
        Bucket=s3_env.bucket,
        Key="raw/big.csv",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"x\n" + b"1\n" * (3 << 20),
    )
    client.complete_multipart_upload(
        Bucket=s3_env.bucket,
        Key="raw/big.csv",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    events = _events(_bodies(s3_env, url, 3))
    assert {e.name for e in events} == {
        "ObjectCreated:Put",
        "ObjectCreated:CompleteMultipartUpload",
    }
    assert {e.key for e in events} == {"raw/big.csv"}
    latest = LatestEvents()
    # the same time, no sequencer: neither is older, so neither is ignored (the ledger
    # finds the second one's file taken)
    assert [latest.stale(e) for e in events] == [False, False]


def test_an_older_event_for_a_key_is_ignored_by_time(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    s3_env.put("raw/a.csv", "x\n1\n")
    first = _events(_bodies(s3_env, url, 2))[0]
    second = first
    for _ in range(20):  # the second put's event time must be later (ms resolution)
        s3_env.put("raw/a.csv", "x\n2\n")
        second = _events(_bodies(s3_env, url, 1))[0]
        if second.time > first.time:
            break
    assert second.time > first.time
    latest = LatestEvents()
    assert not latest.stale(second)
    assert latest.stale(first)  # delivered late: older than the one recorded
    assert not latest.stale(second)  # a duplicate of the newest is not older


# Captured from AWS's documented S3 -> SQS record format (the user guide's "Event message
# structure"), not from moto: moto's records have no sequencer. Labelled as such.
AWS_DOCUMENTED_RECORD = {
    "eventVersion": "2.2",
    "eventSource": "aws:s3",
    "awsRegion": "us-west-2",
    "eventTime": "2026-01-01T00:00:00.000Z",
    "eventName": "ObjectCreated:Put",
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "raw",
        "bucket": {"name": "shop-raw", "arn": "arn:aws:s3:::shop-raw"},
        "object": {
            "key": "orders/week+1.csv",
            "size": 1024,
            "eTag": "0123456789abcdef0123456789abcdef",
            "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
            "sequencer": "0055AED6DCD90281E5",
        },
    },
}


def _aws_body(sequencer: str, event_time: str) -> str:
    record = json.loads(json.dumps(AWS_DOCUMENTED_RECORD))
    record["s3"]["object"]["sequencer"] = sequencer
    record["eventTime"] = event_time
    return json.dumps({"Records": [record]})


def test_sequencer_decides_over_time_where_present() -> None:
    (newer,) = parse_body(_aws_body("0055AED6DCD90281E6", "2026-01-01T00:00:00.000Z")).events
    (older,) = parse_body(_aws_body("0055AED6DCD90281E5", "2026-01-01T00:00:01.000Z")).events
    assert newer.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert newer.key == "orders/week 1.csv"
    latest = LatestEvents()
    assert not latest.stale(newer)
    assert latest.stale(older)  # a later time, an older sequencer: the sequencer wins
    # sequencers of different lengths compare as numbers
    assert sequencer_order("FF", "0100") < 0 and sequencer_order("0100", "100") == 0


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"hello": "world"}',
        json.dumps({"Type": "Notification", "TopicArn": "arn:x", "Message": "plain text"}),
        json.dumps({"Records": [{"eventSource": "aws:dynamodb", "dynamodb": {}}]}),
    ],
)
def test_bodies_that_are_clearly_not_s3_events(body: str) -> None:
    with pytest.raises(NotAnS3EventError):
        parse_body(body)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Records": [{"eventSource": "aws:s3", "s3": {"object": {"key": "a"}}}]}),
        json.dumps({"Records": "nope"}),
        json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}),
        _aws_body("01", "yesterday"),
    ],
)
def test_s3_shaped_bodies_with_a_broken_record(body: str) -> None:
    with pytest.raises(MalformedS3EventError):
        parse_body(body)


def _spec(bucket: str) -> Spec:
    return Spec.model_validate(
        {
            "name": "t",
            "task": "classification",
            "target": "y",
            "sources": [{"name": "orders", "path": f"s3://{bucket}/raw/*.csv"}],
            "contract": {"columns": {"y": {"dtype": "int"}}},
        }
    )


def test_triage_ignores_test_events_filtered_suffixes_and_stale_events(s3_env: S3Env) -> None:
    url = to_sqs(s3_env)
    s3_env.put("raw/a.csv", "x\n1\n")
    s3_env.put("raw/a.json", "{}")  # a suffix no source's glob matches
    s3_env.put("raw/.a.csv.part", "x\n")  # a temporary name
    s3_env.put("raw/deeper/a.csv", "x\n1\n")  # '*' stays within one folder
    s3_env.client().put_object_tagging(
        Bucket=s3_env.bucket, Key="raw/a.csv", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}
    )
    matches = source_matcher(_spec(s3_env.bucket))
    latest = LatestEvents()
    verdicts = [
        (e.key if e else None, v)
        for p in _bodies(s3_env, url, 5)
        for e, v in triage(p, matches, latest)
    ]
    assert verdicts == [
        (None, "test"),
        ("raw/a.csv", "wanted"),
        ("raw/a.json", "unmatched"),
        ("raw/.a.csv.part", "unmatched"),
        ("raw/deeper/a.csv", "unmatched"),
    ]


def test_local_sources_match_no_event(tmp_path: Path) -> None:
    spec = _spec("b").model_copy(
        update={"sources": (_spec("b").sources[0].model_copy(update={"path": "data/raw/*.csv"}),)}
    )
    assert not source_matcher(spec)("s3://b/data/raw/a.csv")
