"""One way to S3 (core/s3client.py): sources, outputs, Polars' reads of outputs and the SQS
consumer reach the endpoint the spec's ``storage:`` section names, over the environment's,
through one cache of boto3 clients. Against the real moto server."""

from __future__ import annotations

from pathlib import Path

import pytest

import driftloop
from driftloop.core import s3client
from driftloop.core.layout import Layout, is_complete, scan_output
from driftloop.core.state import StateDB

from .fixtures.moto import SECRET_KEY, S3Env
from .helpers import TINY_SPEC, write_spec

DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port

SPEC = (
    TINY_SPEC
    + """outputs: {outputs}
storage:
  endpoint_url: {endpoint}
"""
)

CSV = "x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(50))


def _keys(s3: S3Env, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def test_sources_and_outputs_reach_the_spec_endpoint_with_none_in_the_environment(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env.put("raw/a.csv", CSV)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the spec says where S3 is
    project = tmp_path / "p"
    spec = SPEC.format(
        path=s3_env.url("raw/*.csv"), outputs=s3_env.url("out"), endpoint=s3_env.endpoint
    )
    write_spec(project, spec)
    result = driftloop.run(project)
    assert [(r.stage, r.outcome) for r in result.reports] == [("prep", "ran"), ("features", "ran")]
    layout = Layout(project)
    with StateDB(layout.state_db) as db:
        (batch,) = [b.batch_id for b in db.batches()]
    assert is_complete(layout.processed / batch)
    assert any(k.startswith("out/features/") for k in _keys(s3_env, "out/"))
    # Polars reads the committed attempt where boto3 wrote it: the spec's endpoint
    assert scan_output(layout.processed / batch).collect().height == 50
    assert driftloop.read_features(str(project), batch).collect().height == 50
    assert not (project / "data" / "processed").exists()


def test_a_dead_spec_endpoint_wins_over_the_environment_for_sources(
    s3_env: S3Env, tmp_path: Path
) -> None:
    from driftloop.core.errors import StorageUnavailableError

    s3_env.put("raw/a.csv", CSV)  # reachable through AWS_ENDPOINT_URL, which must not be used
    project = tmp_path / "p"
    spec = SPEC.format(path=s3_env.url("raw/*.csv"), outputs=s3_env.url("out"), endpoint=DEAD)
    write_spec(project, spec)
    with pytest.raises(StorageUnavailableError, match=r"127\.0\.0\.1:9") as raised:
        driftloop.run(project)
    assert SECRET_KEY not in str(raised.value)
    assert "storage.endpoint_url" in str(raised.value)  # the fix is named
    assert _keys(s3_env, "out/") == []


def test_a_dead_spec_endpoint_wins_over_the_environment_for_outputs(
    s3_env: S3Env, tmp_path: Path
) -> None:
    project = tmp_path / "p"
    spec = SPEC.format(path="data/raw/points/*.csv", outputs=s3_env.url("out"), endpoint=DEAD)
    write_spec(project, spec)
    (project / "data" / "raw" / "points").mkdir(parents=True)
    (project / "data" / "raw" / "points" / "a.csv").write_text(CSV)
    try:
        result = driftloop.run(project)
    except Exception as exc:  # the pass may stop at its first stage's failure
        said = str(exc)
    else:
        failed = [r for r in result.reports if r.outcome == "failed"]
        assert failed, [(r.stage, r.outcome) for r in result.reports]
        said = " ".join(str(r.error) for r in failed)
    assert "s3://" in said and "did not answer" in said, said
    assert "storage.endpoint_url" in said, said
    assert SECRET_KEY not in said
    assert _keys(s3_env, "out/") == []  # nothing went to the environment's endpoint


def test_one_client_per_settings_and_environment(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = s3client.S3Settings(endpoint_url=s3_env.endpoint)
    first = s3client.client(here)
    assert s3client.client(s3client.S3Settings(endpoint_url=s3_env.endpoint)) is first
    assert s3client.client(s3client.S3Settings(endpoint_url=DEAD)) is not first
    assert first.meta.endpoint_url == s3_env.endpoint
    assert s3client.client(s3client.S3Settings(endpoint_url=DEAD)).meta.endpoint_url == DEAD
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAANOTHERKEY000002")  # a changed credential
    assert s3client.client(here) is not first
    # the SQS consumer's client comes from the same factory, and keeps the environment's
    # endpoint (storage.endpoint_url is S3's)
    from driftloop.core.sqs import sqs_client

    queue = sqs_client("sqs://q", region="us-east-1")
    assert queue is sqs_client("sqs://q", region="us-east-1")
    assert queue.meta.endpoint_url == s3_env.endpoint
    assert queue.meta.service_model.service_name == "sqs"


def test_outputs_roots_bind_their_settings_by_longest_prefix() -> None:
    s3client.bind("s3://b1/root", s3client.S3Settings(endpoint_url="http://a:1"))
    s3client.bind("s3://b1/root/deeper", s3client.S3Settings(region="eu-west-1"))
    assert s3client.settings_for("s3://b1/root/x").endpoint_url == "http://a:1"
    assert s3client.settings_for("s3://b1/root/deeper/x").region == "eu-west-1"
    assert s3client.settings_for("s3://b1/rootless/x") == s3client.S3Settings()
    assert s3client.polars_options("s3://b1/elsewhere") is None  # the environment alone
    options = s3client.polars_options("s3://b1/root/x")
    assert options is not None
    assert options["aws_endpoint_url"] == "http://a:1"
    assert options["aws_allow_http"] == "true"
