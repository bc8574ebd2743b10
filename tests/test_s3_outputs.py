"""What only an object store's commit has: the conditional put of the marker, races between
writers, another machine's attempts, and S3's errors (the shared contract is in
tests/test_storage.py). All against the real moto server through boto3."""

from __future__ import annotations

import json
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from driftloop.core.errors import (
    SpecError,
    StorageError,
    StorageUnavailableError,
    TransientError,
)
from driftloop.core.layout import Layout
from driftloop.core.s3outputs import S3OutputStore
from driftloop.core.spec import load_spec
from driftloop.core.urls import ObjectUrl

from .fixtures.moto import SECRET_KEY, S3Env
from .helpers import write_spec
from .test_lifecycle import SPEC


def _keys(s3: S3Env, prefix: str = "") -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _write(store: S3OutputStore, output: ObjectUrl, text: str) -> None:
    with store.attempt(output) as attempt:
        (attempt / "data.txt").write_text(text)
        store.seal(attempt, {"text": text})


def test_the_marker_names_the_committed_attempt_and_nothing_secret(s3_env: S3Env) -> None:
    store, output = S3OutputStore(), ObjectUrl(s3_env.url("p/b1"))
    _write(store, output, "one")
    marker = json.loads(
        s3_env.client().get_object(Bucket=s3_env.bucket, Key="p/b1/_SUCCESS")["Body"].read()
    )
    assert marker["files"] == ["data.txt", "manifest.json"]
    assert marker["prefix"] == f"p/b1/_attempts/{marker['attempt']}/"
    assert store.file(output, "data.txt") == f"s3://{s3_env.bucket}/{marker['prefix']}data.txt"
    for key in _keys(s3_env):
        body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
        assert SECRET_KEY.encode() not in body, key


def test_a_writer_whose_conditional_put_loses_leaves_the_winner_standing(s3_env: S3Env) -> None:
    """Two writers of the same new output: the one that began first commits last and loses
    (If-None-Match: *); its files are removed at once, the winner's output is intact."""
    store, output = S3OutputStore(), ObjectUrl(s3_env.url("p/b1"))
    with store.attempt(output) as slow:
        (slow / "data.txt").write_text("slow")
        _write(store, output, "fast")  # another writer commits meanwhile
        store.seal(slow, {"text": "slow"})
    assert store.read_manifest(output) == {"text": "fast"}
    assert store.read_bytes(output, "data.txt") == b"fast"
    marker = json.loads(_marker(s3_env, "p/b1"))
    assert _keys(s3_env) == sorted(
        ["p/b1/_SUCCESS", f"{marker['prefix']}data.txt", f"{marker['prefix']}manifest.json"]
    )


def test_a_replacement_loses_to_a_commit_it_did_not_see(s3_env: S3Env) -> None:
    """If-Match on the marker the attempt saw: a newer commit in between wins."""
    store, output = S3OutputStore(), ObjectUrl(s3_env.url("p/b1"))
    _write(store, output, "old")
    with store.attempt(output) as slow:
        (slow / "data.txt").write_text("slow")
        _write(store, output, "newer")  # replaces "old" while the slow attempt writes
        store.seal(slow, {"text": "slow"})
    assert store.read_bytes(output, "data.txt") == b"newer"
    assert len([k for k in _keys(s3_env) if k.endswith("data.txt")]) == 1  # old and slow gone


def test_a_failed_attempt_withdraws_only_the_output_it_saw(s3_env: S3Env) -> None:
    store, output = S3OutputStore(), ObjectUrl(s3_env.url("p/b1"))
    _write(store, output, "old")
    with pytest.raises(RuntimeError), store.attempt(output) as attempt:
        (attempt / "data.txt").write_text("x")
        _write(store, output, "newer")  # another writer replaced "old" meanwhile
        raise RuntimeError("this stage failed")
    assert store.read_bytes(output, "data.txt") == b"newer"  # not withdrawn by the failure


def test_a_sweep_waits_out_another_machines_attempt(s3_env: S3Env) -> None:
    """Another machine's process cannot be asked whether it lives: its attempt is swept once
    older than the grace period; a dead process of this machine's at once."""
    store, base = S3OutputStore(), ObjectUrl(s3_env.url("p"))
    _write(store, base / "b1", "one")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    elsewhere = f"p/b1/_attempts/{stamp}~4242~another-host~0000/data.txt"
    s3_env.put(elsewhere, "theirs")
    S3OutputStore(grace_seconds=3600).sweep(base)
    assert elsewhere in _keys(s3_env)
    S3OutputStore(grace_seconds=0).sweep(base)
    assert elsewhere not in _keys(s3_env)
    assert store.read_bytes(base / "b1", "data.txt") == b"one"
    # this machine's, by a live process (this one): left alone whatever its age
    mine = f"p/b2/_attempts/{stamp}~{_live_pid()}~{socket.gethostname()}~0000/data.txt"
    s3_env.put(mine, "in progress")
    S3OutputStore(grace_seconds=0).sweep(base)
    assert mine in _keys(s3_env)


def test_a_missing_bucket_is_named_with_the_fix(s3_env: S3Env) -> None:
    store = S3OutputStore()
    with pytest.raises(StorageError) as raised:
        store.is_committed("s3://no-such-bucket-here/p/b1")
    message = str(raised.value)
    assert "'no-such-bucket-here' does not exist" in message
    assert "create it or fix the outputs address" in message
    assert SECRET_KEY not in message


def test_an_endpoint_that_does_not_answer_is_transient(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageUnavailableError) as raised:
        S3OutputStore().is_committed(s3_env.url("p/b1"))
    message = str(raised.value)
    assert f"s3://{s3_env.bucket}/p/b1/_SUCCESS" in message
    assert "check AWS_ENDPOINT_URL" in message
    assert SECRET_KEY not in message


def test_a_foreign_marker_is_an_error_not_an_output(s3_env: S3Env) -> None:
    s3_env.put("p/b1/_SUCCESS", "")  # as Spark or Hadoop writes it: empty
    with pytest.raises(StorageError, match=r"p/b1/_SUCCESS: not a driftloop commit marker"):
        S3OutputStore().is_committed(s3_env.url("p/b1"))


def _marker(s3: S3Env, output_key: str) -> bytes:
    body: bytes = (
        s3.client().get_object(Bucket=s3.bucket, Key=f"{output_key}/_SUCCESS")["Body"].read()
    )
    return body


def _live_pid() -> int:
    import os

    return os.getpid()


def test_the_outputs_root_comes_from_the_spec(tmp_path: Path) -> None:
    """Every reader of a project asks its Layout, so every reader sees the same place."""
    write_spec(tmp_path, SPEC)
    local = Layout(tmp_path)
    assert local.processed == tmp_path / "data" / "processed"
    assert local.batch_checks == tmp_path / "data" / "monitoring" / "batches"
    assert not local.on_object_store
    write_spec(tmp_path, SPEC + "outputs: s3://shop-outputs/prod/\n")
    layout = Layout(tmp_path)
    assert layout.on_object_store
    assert layout.processed == "s3://shop-outputs/prod/processed"
    assert layout.features / "b1" == "s3://shop-outputs/prod/features/b1"
    assert layout.quarantine.parent == "s3://shop-outputs/prod"
    assert layout.relative(layout.processed / "b1") == "s3://shop-outputs/prod/processed/b1"
    assert layout.batch_checks == "s3://shop-outputs/prod/monitoring/batches"
    assert layout.models == tmp_path / "data" / "models"  # still here, with the registry
    assert layout.reports == "s3://shop-outputs/prod/monitoring/reports"
    # the logs serving writes are shared too, so a monitor elsewhere reads them
    assert layout.predictions == "s3://shop-outputs/prod/monitoring/predictions"
    assert layout.feedback == "s3://shop-outputs/prod/monitoring/feedback"
    assert local.predictions == tmp_path / "data" / "monitoring" / "predictions"
    assert load_spec(tmp_path).outputs == "s3://shop-outputs/prod"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("data/out", "outputs must be an s3://bucket/prefix URL, got 'data/out'"),
        ("s3://", "outputs must be an s3://bucket/prefix URL"),
        ("s3://key:secret@bucket/p", "outputs holds credentials"),
    ],
)
def test_an_outputs_value_that_is_no_bucket_url_is_refused(
    tmp_path: Path, value: str, expected: str
) -> None:
    write_spec(tmp_path, SPEC + f"outputs: {value!r}\n")
    with pytest.raises(SpecError, match=re.escape(expected)) as raised:
        load_spec(tmp_path)
    assert "secret" not in str(raised.value).replace("outputs holds credentials", "")


class _Flaky:
    """The real boto3 client with one fault injected where the network would fail: an
    upload that never arrives, or a marker put that S3 takes but whose answer is lost."""

    def __init__(self, real: Any, fail: str) -> None:
        self.real, self.fail, self.uploads = real, fail, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def upload_file(self, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import EndpointConnectionError

        self.uploads += 1
        if self.fail == "upload" and self.uploads == 2:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return self.real.upload_file(*args, **kwargs)

    def put_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ReadTimeoutError

        answer = self.real.put_object(**kwargs)
        if self.fail == "answer" and kwargs["Key"].endswith("/_SUCCESS"):
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1")
        return answer


def _two_files(store: S3OutputStore, output: ObjectUrl) -> None:
    with store.attempt(output) as attempt:
        (attempt / "data.txt").write_text("new")
        store.seal(attempt, {"text": "new"})  # data.txt, then manifest.json


def test_a_failed_upload_removes_its_files_and_says_where(s3_env: S3Env) -> None:
    """A watcher lives on after a failed upload, so its sweep would never take its own
    attempt: the attempt removes what it uploaded, and the stale output is withdrawn."""
    output = ObjectUrl(s3_env.url("p/b1"))
    _write(S3OutputStore(), output, "old")
    flaky = S3OutputStore(client=_Flaky(s3_env.client(), "upload"))
    with pytest.raises(StorageUnavailableError) as raised:
        _two_files(flaky, output)
    assert f"s3://{s3_env.bucket}/p/b1/_attempts/" in str(raised.value)
    assert isinstance(raised.value, TransientError)  # the loop retries it
    assert _keys(s3_env) == []  # nothing half-uploaded, the stale output withdrawn


def test_a_lost_answer_to_the_marker_put_is_resolved_by_the_marker(s3_env: S3Env) -> None:
    """S3 took the marker but the answer timed out: the marker names this attempt, so the
    output is committed, not deleted."""
    output = ObjectUrl(s3_env.url("p/b1"))
    store = S3OutputStore(client=_Flaky(s3_env.client(), "answer"))
    _two_files(store, output)
    assert store.read_manifest(output) == {"text": "new"}
    assert store.read_bytes(output, "data.txt") == b"new"


def test_a_replay_writes_its_outputs_in_its_own_folder(tmp_path: Path) -> None:
    """A replay's policies are projects of their own: they must not write into (and
    replace) the outputs the project keeps on its bucket."""
    from driftloop.core.spec import parse_spec, read_yaml
    from driftloop.orchestration.replay import policy_spec

    text = SPEC + "outputs: s3://shop-outputs/prod\n"
    policy = tmp_path / "policy"
    landed = parse_spec(read_yaml(policy_spec(text, policy, {})))
    assert landed.outputs is None
    write_spec(policy, policy_spec(text, policy, {}))
    assert Layout(policy).processed == policy / "data" / "processed"


def test_a_bucket_gone_during_the_upload_is_named_with_the_fix(s3_env: S3Env) -> None:
    """boto3's transfer wraps S3's answer in its own error: it is unwrapped, not shown raw."""
    store = S3OutputStore()
    with pytest.raises(StorageError) as raised, store.attempt(s3_env.url("p/b1")) as attempt:
        (attempt / "data.txt").write_text("x")
        store.seal(attempt, {"text": "x"})
        s3_env.client().delete_bucket(Bucket=s3_env.bucket)  # empty until the upload
    message = str(raised.value)
    assert message.startswith(f"s3://{s3_env.bucket}/p/b1/_attempts/")
    assert f"the bucket {s3_env.bucket!r} does not exist" in message
    assert SECRET_KEY not in message


class _Gets:
    """GetObject requests by key, from botocore's before-send hook on the outputs' client."""

    def __init__(self, store: S3OutputStore, output: ObjectUrl) -> None:
        self.keys: list[str] = []
        self.client = store._client(output)

    def __call__(self, request: Any, event_name: str, **_: Any) -> None:
        if event_name.endswith(".GetObject"):
            self.keys.append(request.url.split("?")[0].rsplit("/", 2)[-2:][-1])

    def __enter__(self) -> _Gets:
        self.client.meta.events.register("before-send.s3.GetObject", self)
        return self

    def __exit__(self, *_: object) -> None:
        self.client.meta.events.unregister("before-send.s3.GetObject", self)


def test_within_one_view_a_marker_and_a_manifest_are_fetched_once(s3_env: S3Env) -> None:
    """A pass asks many times whether an output is committed and reads its manifest from
    several stages: inside ``one_view`` that is one GET of each; outside, one a question."""
    from driftloop.core.outputs import one_view

    store, output = S3OutputStore(), ObjectUrl(s3_env.url("p/b1"))
    _write(store, output, "one")

    def ask() -> None:
        for _ in range(3):
            assert store.is_committed(output)
            assert store.read_manifest(output) == {"text": "one"}
            assert store.file(output, "data.txt").endswith("/data.txt")

    with _Gets(store, output) as outside:
        ask()
    assert outside.keys.count("_SUCCESS") == 9 and outside.keys.count("manifest.json") == 3
    with _Gets(store, output) as inside, one_view():
        ask()
        _write(store, output, "two")  # its own commit: remembered, not asked again
        assert store.read_manifest(output) == {"text": "two"}
    assert inside.keys.count("_SUCCESS") == 1  # the first question only
    assert inside.keys.count("manifest.json") == 2  # "one", then "two"


def test_a_view_reads_past_another_writers_commit(s3_env: S3Env) -> None:
    """Another worker replaces an output this pass read: the attempt remembered is gone, so
    the reader asks the marker again and reads the new output, not an error."""
    import threading

    from driftloop.core.outputs import one_view

    store, output = S3OutputStore(), ObjectUrl(s3_env.url("p/b1"))
    _write(store, output, "old")
    with one_view():
        assert store.read_bytes(output, "data.txt") == b"old"
        # a thread starts outside the view: another writer, as another worker would be
        other = threading.Thread(target=_write, args=(S3OutputStore(), output, "new"))
        other.start()
        other.join()
        assert store.read_bytes(output, "data.txt") == b"new"
        assert store.read_manifest(output) == {"text": "new"}
