"""Sources on S3: a moto server on 127.0.0.1 driven through the real boto3 (and Polars).

The store's own contract runs in tests/test_storage.py; here, what is S3's alone (versions,
ETags, keys with spaces), then a project whose sources live in a bucket, end to end.
"""

from __future__ import annotations

import hashlib

import pytest

from driftloop.core import s3store
from driftloop.core.s3store import S3RawStore

from .fixtures.moto import S3Env

CONTENT = b"x,y\n1,2\n"


def test_an_unversioned_bucket_identifies_an_object_by_its_etag(s3_env: S3Env) -> None:
    put = s3_env.put("raw/a.csv", CONTENT)
    store = S3RawStore()
    (listed,) = store.list(s3_env.url("raw/*.csv"))
    assert listed.key == s3_env.url("raw/a.csv")
    assert listed.version == put["ETag"].strip('"')
    assert listed == store.stat(s3_env.url("raw/a.csv"))
    # an ETag is not the content's hash: the SHA-256 is computed from the body
    assert store.sha256(listed.key) == hashlib.sha256(CONTENT).hexdigest()


def test_a_versioned_bucket_identifies_an_object_by_its_version_id(s3_env: S3Env) -> None:
    client = s3_env.client()
    client.put_bucket_versioning(
        Bucket=s3_env.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    first = s3_env.put("raw/a.csv", CONTENT)
    store = S3RawStore()
    (listed,) = store.list(s3_env.url("raw/*.csv"))
    assert listed.version == first["VersionId"]
    assert listed == store.stat(listed.key)
    second = s3_env.put("raw/a.csv", CONTENT)  # the same bytes again: a new version
    (again,) = store.list(s3_env.url("raw/*.csv"))
    assert again.version == second["VersionId"] != first["VersionId"]
    assert again == store.stat(listed.key)
    client.delete_object(Bucket=s3_env.bucket, Key="raw/a.csv")  # a delete marker on top
    assert store.list(s3_env.url("raw/*.csv")) == []


def test_a_key_with_spaces_and_unicode_is_itself(s3_env: S3Env) -> None:
    name = "raw/week 1 – Zürich.csv"
    s3_env.put(name, CONTENT)
    store = S3RawStore()
    (listed,) = store.list(s3_env.url("raw/*.csv"))
    assert listed.key == s3_env.url(name)
    with store.open(listed.key) as body:
        assert body.read() == CONTENT


def test_many_objects_are_listed_across_pages(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3store, "PAGE_SIZE", 2)  # S3 pages 1,000 keys: here, 2 per page
    for i in range(7):
        s3_env.put(f"raw/{i:04d}.csv", b"x\n")
    s3_env.put("raw/deeper/x.csv", b"x\n")
    keys = S3RawStore().keys(s3_env.url("raw/*.csv"))
    assert keys == [s3_env.url(f"raw/{i:04d}.csv") for i in range(7)]
    assert s3_env.url("raw/deeper/x.csv") in S3RawStore().keys(s3_env.url("raw/**/*.csv"))
