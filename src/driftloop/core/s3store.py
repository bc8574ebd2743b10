"""Raw files in an S3 bucket (or any S3-compatible store): :class:`S3RawStore`.

A source's ``path`` is ``s3://bucket/prefix/*.csv``; the keys the ingest ledger records are
full URLs (``s3://bucket/prefix/a.csv``), so a ledger entry names its store. Keys are taken
literally, as the AWS CLI takes them: a space or a letter outside ASCII is itself, not
``%20`` (notifications, which URL-encode keys, are decoded where they are read).

Identity without reading content (:class:`~driftloop.core.rawstore.RawObject`): size, the
last modification (the second S3 keeps, with a sub-second part drawn from the version: see
:func:`_mtime_ns`), and a version: the object's version id where the bucket has
versioning, else its ETag. The content's identity is the SHA-256
computed while the body streams: an ETag is not a content hash (a multipart upload's is not
the MD5 of the content).

Connection settings come from boto3's usual sources (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, the credentials' variables and files), overridden
by the spec's optional ``storage`` section (endpoint, region, profile; never credentials).
boto3 is imported when an ``s3://`` store is first used, never by a project without one.

Errors name the bucket and key and the fix: a missing object is a
:class:`FileNotFoundError` (as on a disk: the pass goes on without it), a missing bucket a
:class:`~driftloop.core.errors.BucketNotFoundError`, refused or missing credentials a
:class:`~driftloop.core.errors.StorageAccessError`, an endpoint that does not answer, a
throttled request or a 5xx a :class:`~driftloop.core.errors.StorageUnavailableError`
(transient: retried). Credentials never appear in them.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from driftloop.core.errors import (
    BucketNotFoundError,
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
    first_line,
)
from driftloop.core.rawstore import CHUNK, OnChange, RawObject, Subscription, glob_regex
from driftloop.core.redact import redact
from driftloop.core.s3client import ENVIRONMENT, S3Settings, endpoint_of, require_boto3
from driftloop.core.s3client import client as shared_client

SCHEME = "s3"
PREFIX = "s3://"
PAGE_SIZE = 1000  # keys per listing request (S3's own maximum)
_versioned: dict[tuple[str | None, ...], bool] = {}  # (configuration, bucket) -> versioning on

_ACCESS = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503", "500"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}


def _require_boto3() -> None:
    require_boto3("s3:// sources need")


def split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; the key may be empty or a glob."""
    if not url.lower().startswith(PREFIX):
        raise StorageError(f"{url!r} is not an s3:// URL (expected s3://bucket/key)")
    bucket, _, key = url[len(PREFIX) :].partition("/")
    if not bucket:
        raise StorageError(f"{url!r} names no bucket; write s3://BUCKET/prefix/*.csv")
    return bucket, key


def _mtime_ns(stamp: datetime, version: str) -> int:
    """An object's modification time, in nanoseconds: the second S3 keeps (a listing may
    show milliseconds a HEAD does not, so whole seconds make both agree), plus a sub-second
    part drawn from the version. The ledger's sightings are keyed by (size, mtime_ns): with
    whole seconds alone, an object overwritten within the same second by content of the same
    size would look unchanged; with the version folded in, every new version is a new
    sighting. The time stays within the second S3 recorded."""
    fraction = int.from_bytes(hashlib.sha256(version.encode()).digest()[:8], "big")
    return int(stamp.timestamp()) * 1_000_000_000 + fraction % 1_000_000_000


class S3RawStore:
    """A source's objects in S3 (see the module docstring). ``root`` (the project folder)
    is unused: keys are URLs. ``endpoint_url``, ``region``, ``profile`` override boto3's
    own configuration (the spec's ``storage`` section)."""

    scheme = SCHEME

    def __init__(
        self,
        root: Path | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
    ) -> None:
        self.root = root
        self.endpoint_url, self.region, self.profile = endpoint_url, region, profile

    # -- the client, and what its errors mean ------------------------------------------

    @property
    def settings(self) -> S3Settings:
        return S3Settings(self.endpoint_url, self.region, self.profile)

    def _config(self) -> tuple[str | None, ...]:
        return (
            self.endpoint_url,
            self.region,
            self.profile,
            *(os.environ.get(n) for n in ENVIRONMENT),
        )

    @property
    def client(self) -> Any:
        """The process's client for these settings (:func:`driftloop.core.s3client.client`)."""
        return shared_client(self.settings)

    def endpoint(self) -> str:
        """Where requests go, for messages (a URL holds no credentials here)."""
        return endpoint_of(self.settings)

    @contextmanager
    def _calling(self, bucket: str, key: str | None) -> Iterator[None]:
        """Translate botocore's errors into driftloop's, naming the bucket and key."""
        _require_boto3()
        from botocore import exceptions as bx

        where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
        try:
            yield
        except bx.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            raise self._client_error(bucket, key, where, code, status, exc) from None
        except bx.NoCredentialsError:
            raise StorageAccessError(
                f"{where}: no AWS credentials were found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or storage.profile in "
                "driftloop.yaml) in the environment driftloop runs in"
            ) from None
        except bx.ProfileNotFound as exc:
            raise StorageAccessError(
                f"{where}: {exc}; name a profile of the AWS config file in AWS_PROFILE or "
                "storage.profile in driftloop.yaml"
            ) from None
        except bx.NoRegionError:
            raise StorageError(
                f"{where}: no AWS region is set; set AWS_DEFAULT_REGION or storage.region "
                "in driftloop.yaml"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectionError) as exc:
            raise StorageUnavailableError(
                f"{where}: the S3 endpoint {self.endpoint()} did not answer "
                f"({type(exc).__name__}); check that it runs and that AWS_ENDPOINT_URL or "
                "storage.endpoint_url in driftloop.yaml names it, then run again: nothing "
                "was lost (the object is taken on the next pass)"
            ) from None
        except (bx.ReadTimeoutError, bx.ResponseStreamingError) as exc:
            raise StorageUnavailableError(
                f"{where}: the S3 endpoint {self.endpoint()} stopped answering while "
                f"reading ({redact(first_line(exc))}); run again: nothing was lost"
            ) from None

    def _client_error(
        self, bucket: str, key: str | None, where: str, code: str, status: int, exc: Exception
    ) -> Exception:
        if code == "NoSuchBucket" or (key is None and status == 404):
            return BucketNotFoundError(
                f"{where}: the bucket {bucket!r} does not exist at {self.endpoint()}; check "
                "the bucket name in the source's path (s3://BUCKET/...) and the endpoint "
                "(AWS_ENDPOINT_URL or storage.endpoint_url), or create the bucket"
            )
        if code in _MISSING_KEY or status == 404:
            return FileNotFoundError(errno.ENOENT, "no such object", where)
        if code in _ACCESS or status == 403:
            return StorageAccessError(
                f"{where}: S3 refused the request ({code or status}) at {self.endpoint()}; "
                "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE / storage.profile) and that they may list and read the bucket "
                "(s3:ListBucket, s3:GetObject)"
            )
        if code in _THROTTLED or status >= 500:
            return StorageUnavailableError(
                f"{where}: S3 at {self.endpoint()} answered {code or status} (throttled or "
                "failing on its side); retried later: nothing was lost"
            )
        return StorageError(
            f"{where}: S3 refused the request: {redact(first_line(exc))}; check the path "
            "and the storage settings (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, storage: in "
            "driftloop.yaml)"
        )

    # -- the protocol -------------------------------------------------------------------

    def versioned(self, bucket: str) -> bool:
        """Whether the bucket keeps versions (then an object's version id is its identity);
        asked once per bucket, configuration and process (prep builds a store per file). No
        permission to ask is an unversioned bucket."""
        key = (*self._config(), bucket)
        found = _versioned.get(key)
        if found is None:
            try:
                with self._calling(bucket, None):
                    answer = self.client.get_bucket_versioning(Bucket=bucket)
                found = answer.get("Status") == "Enabled"
            except StorageAccessError:
                found = False
            _versioned[key] = found
        return found

    def _listing(self, pattern: str) -> Iterator[RawObject]:
        bucket, key_pattern = split_url(pattern)
        magic = min((i for i, c in enumerate(key_pattern) if c in "*?["), default=None)
        prefix = key_pattern if magic is None else key_pattern[:magic]
        matches = glob_regex(key_pattern).fullmatch
        # a pattern whose wildcards stay in its last segment lists that "folder" alone
        flat = "/" not in key_pattern[len(prefix) :] and "**" not in key_pattern
        args: dict[str, Any] = {
            "Bucket": bucket,
            "Prefix": prefix,
            "PaginationConfig": {"PageSize": PAGE_SIZE},
        }
        if flat:
            args["Delimiter"] = "/"
        versioned = self.versioned(bucket)
        with self._calling(bucket, None):
            if versioned:
                pages = self.client.get_paginator("list_object_versions").paginate(**args)
                for page in pages:
                    for item in page.get("Versions", ()):
                        if item.get("IsLatest") and matches(item["Key"]):
                            yield self._object(bucket, item, item["VersionId"])
                    # a key whose latest version is a delete marker is not listed at all
            else:
                pages = self.client.get_paginator("list_objects_v2").paginate(**args)
                for page in pages:
                    for item in page.get("Contents", ()):
                        if matches(item["Key"]):
                            yield self._object(bucket, item, item["ETag"].strip('"'))

    @staticmethod
    def _object(bucket: str, item: dict[str, Any], version: str) -> RawObject:
        return RawObject(
            f"{PREFIX}{bucket}/{item['Key']}",
            int(item["Size"]),
            _mtime_ns(item["LastModified"], version),
            version,
        )

    def list(self, pattern: str) -> builtins.list[RawObject]:
        found = [o for o in self._listing(pattern) if not o.key.endswith("/")]  # no folders
        found.sort()  # by key: keys are unique
        return found

    def keys(self, pattern: str) -> builtins.list[str]:
        return [o.key for o in self.list(pattern)]

    def stat(self, key: str) -> RawObject:
        bucket, name = split_url(key)
        with self._calling(bucket, name):
            head = self.client.head_object(Bucket=bucket, Key=name)
        version = head.get("VersionId") if self.versioned(bucket) else None
        version = version or str(head["ETag"]).strip('"')
        return RawObject(
            key, int(head["ContentLength"]), _mtime_ns(head["LastModified"], version), version
        )

    def open(self, key: str) -> BinaryIO:
        bucket, name = split_url(key)
        with self._calling(bucket, name):
            answer = self.client.get_object(Bucket=bucket, Key=name)
        return cast("BinaryIO", _Body(self, bucket, name, answer["Body"]))

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.open(key) as body:
            while block := body.read(CHUNK):
                digest.update(block)
        return digest.hexdigest()

    def local_path(self, key: str) -> Path | None:
        return None

    def watch(self, prefix: str, on_change: OnChange) -> Subscription:
        raise StorageError(
            f"{prefix}: S3 bucket notifications are not consumed yet; the loop lists the "
            "bucket on its timer instead"
        )


class _Body:
    """An object's body to read, whose read errors name the object (a connection dropped
    mid-body is transient: the runner retries)."""

    def __init__(self, store: S3RawStore, bucket: str, key: str, body: Any) -> None:
        self._store, self._bucket, self._key, self._body = store, bucket, key, body

    def read(self, size: int = -1) -> bytes:
        with self._store._calling(self._bucket, self._key):
            data: bytes = self._body.read(size if size >= 0 else None)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
