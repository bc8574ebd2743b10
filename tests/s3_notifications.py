"""Bucket notifications wired on the moto server the way a user wires them on AWS.

Each function configures one delivery path for the test's bucket (``S3Env``) and returns
the SQS queue's URL: S3 -> SQS, S3 -> SNS -> SQS (enveloped or raw delivery), and
S3 -> EventBridge -> rule -> SQS. What arrives on those queues is what moto's S3 really
sends, so the parser and the consumer are tested on real message bodies.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tests.fixtures.moto import S3Env

CREATED_AND_REMOVED = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
RECEIVE_GUARD_SECONDS = 60.0  # a hang guard: receiving stops as soon as messages came


def new_queue(env: S3Env, *, visibility: int = 30) -> tuple[str, str]:
    """A fresh queue: (URL, ARN)."""
    sqs = env.client("sqs")
    url = sqs.create_queue(
        QueueName=f"q-{uuid.uuid4().hex[:16]}",
        Attributes={"VisibilityTimeout": str(visibility)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def to_sqs(env: S3Env, *, suffix: str | None = None) -> str:
    """S3 -> SQS: the bucket's QueueConfigurations name the queue."""
    url, arn = new_queue(env)
    config: dict[str, Any] = {"QueueArn": arn, "Events": CREATED_AND_REMOVED}
    if suffix is not None:
        config["Filter"] = {"Key": {"FilterRules": [{"Name": "suffix", "Value": suffix}]}}
    env.client().put_bucket_notification_configuration(
        Bucket=env.bucket, NotificationConfiguration={"QueueConfigurations": [config]}
    )
    return url


def to_sns(env: S3Env, *, raw: bool = False, also_raw: bool = False) -> list[str]:
    """S3 -> SNS -> SQS: a topic and a queue subscribed to it (with raw message delivery
    when ``raw``); ``also_raw`` subscribes a second queue with raw delivery. The queues'
    URLs."""
    sns = env.client("sns")
    topic = sns.create_topic(Name=f"t-{uuid.uuid4().hex[:16]}")["TopicArn"]
    urls = []
    for raw_delivery in (raw, True) if also_raw else (raw,):
        url, arn = new_queue(env)
        attributes = {"RawMessageDelivery": "true"} if raw_delivery else {}
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=attributes)
        urls.append(url)
    env.client().put_bucket_notification_configuration(
        Bucket=env.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": CREATED_AND_REMOVED}]
        },
    )
    return urls


def to_eventbridge(env: S3Env) -> str:
    """S3 -> EventBridge -> rule -> SQS: the bucket sends to EventBridge, a rule on its
    name (moto's default bus is shared by the session's tests) targets the queue."""
    url, arn = new_queue(env)
    events = env.client("events")
    rule = f"r-{uuid.uuid4().hex[:16]}"
    pattern = {
        "source": ["aws.s3"],
        "detail-type": ["Object Created", "Object Deleted"],
        "detail": {"bucket": {"name": [env.bucket]}},
    }
    events.put_rule(Name=rule, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": arn}])
    env.client().put_bucket_notification_configuration(
        Bucket=env.bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    return url


def receive(env: S3Env, url: str, count: int) -> list[dict[str, Any]]:
    """At least ``count`` messages from the queue (long polls; not deleted)."""
    sqs = env.client("sqs")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + RECEIVE_GUARD_SECONDS
    while len(got) < count and time.monotonic() < deadline:
        answer = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=300
        )
        got += answer.get("Messages", [])
    assert len(got) >= count, f"{len(got)} of {count} messages arrived"
    return got


def in_queue(env: S3Env, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attributes = env.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )
