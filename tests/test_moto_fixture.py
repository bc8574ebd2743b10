"""The moto server fixture: a real server, reached with the standard AWS variables."""

from __future__ import annotations

import boto3

from tests.fixtures.moto import S3Env


def test_standard_variables_reach_the_server(s3_env: S3Env) -> None:
    s3_env.put("raw/a b/é.csv", "x,y\n1,2\n")
    client = boto3.client("s3")  # endpoint, region and keys from the environment only
    listed = client.list_objects_v2(Bucket=s3_env.bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["raw/a b/é.csv"]
