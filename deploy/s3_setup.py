"""Make what deploy/compose.yaml's services expect on its S3 and SQS endpoint, once.

The raw-data bucket, whose object events under ``raw/`` go to an SQS queue (what
``ingest.events`` names), the outputs bucket and MLflow's artifacts bucket. What an
account's infrastructure code would create; here the compose file's ``s3-setup`` service
runs it against the moto server (in the driftloop image: boto3 is in the ``s3`` extra).
Safe to run again: what exists is kept, the notification is set to the same value. On AWS
the queue would also need a policy that lets S3 send to it; this sets none (moto needs none).

Names come from the environment (defaults in brackets): DRIFTLOOP_RAW_BUCKET
[driftloop-raw], DRIFTLOOP_OUTPUTS_BUCKET [driftloop-outputs], MLFLOW_ARTIFACTS_BUCKET
[driftloop-mlflow], DRIFTLOOP_EVENTS_QUEUE [driftloop-raw-events], DRIFTLOOP_RAW_PREFIX
[raw/]; the endpoint and credentials from the usual AWS variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import ClientError


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise
    if region == "us-east-1":  # the one region that takes no location constraint
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def main(environ: Mapping[str, str] = os.environ) -> int:
    raw = environ.get("DRIFTLOOP_RAW_BUCKET", "driftloop-raw")
    outputs = environ.get("DRIFTLOOP_OUTPUTS_BUCKET", "driftloop-outputs")
    artifacts = environ.get("MLFLOW_ARTIFACTS_BUCKET", "driftloop-mlflow")
    queue = environ.get("DRIFTLOOP_EVENTS_QUEUE", "driftloop-raw-events")
    prefix = environ.get("DRIFTLOOP_RAW_PREFIX", "raw/")
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    s3 = session.client("s3", region_name=region)
    sqs = session.client("sqs", region_name=region)
    for bucket in (raw, outputs, artifacts):
        ensure_bucket(s3, bucket, region)
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=raw,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )
    print(f"s3://{raw}/{prefix} notifies sqs://{queue}; s3://{outputs} and s3://{artifacts} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
