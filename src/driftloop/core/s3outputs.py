"""Stage outputs on S3: an attempt prefix per run, and a commit marker put once, conditionally.

An object store has no rename, so an output ``s3://bucket/p/data/processed/b1`` is laid out
as::

    b1/_attempts/<run id>/data.parquet    an attempt's files, manifest.json among them
    b1/_SUCCESS                           the commit marker: JSON naming the committed attempt

An attempt writes its files into a local temporary folder (Polars and pyarrow write files),
then uploads them under its own run-specific prefix (no reader looks there), then publishes
the marker with one conditional put: ``If-None-Match: *`` when no output was committed when
the attempt began, ``If-Match: <ETag>`` of the marker it saw otherwise. So a marker is only
ever replaced by a writer that knew what it replaced; a writer whose put loses (another one
committed meanwhile: HTTP 412, or 409 when two puts race) removes its own prefix and leaves
the winner standing. Readers resolve every file through the marker (:meth:`S3OutputStore.file`)
and see the old output, or the new one, whole. :meth:`S3OutputStore.retract` deletes the marker
(with ``If-Match``: it withdraws the output it saw, never a newer one), then the files.

A run id is ``<UTC time>~<pid>~<host>~<random>``: :meth:`S3OutputStore.sweep` removes the
prefixes no marker names whose process is gone (this machine) or which are older than the
grace period (another machine's), as the local store does with its hidden folders.

boto3 is imported on first use. The client is :mod:`driftloop.core.s3client`'s, with the
settings the spec's ``storage:`` section bound to the outputs root (endpoint, region,
profile) over the AWS environment; credentials come from boto3's usual chain (the ``AWS_*``
variables, a profile, an instance role): the store never holds, logs or writes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.core import s3client
from driftloop.core.errors import StorageError, StorageUnavailableError
from driftloop.core.outputs import MANIFEST, SUCCESS, Address, LocalOutputStore, remembered
from driftloop.core.procs import pid_alive
from driftloop.core.urls import ObjectUrl

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"
MARKER_FORMAT = 1
# Another machine's attempt is swept once this old: long enough for any upload to finish.
GRACE_SECONDS = 6 * 3600.0
_SEP = "~"
_LOCAL_PREFIX = "driftloop-s3-attempt"
# The conditional put lost: 412 (the marker changed), 409 (two puts raced), 404 (If-Match
# on a marker that was deleted meanwhile).
_LOST = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"}
_TRANSIENT = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}


class Marker:
    """A committed output's marker: the attempt it names, and its ETag."""

    __slots__ = ("body", "etag")

    def __init__(self, etag: str, body: dict[str, Any]) -> None:
        self.etag, self.body = etag, body

    @property
    def prefix(self) -> str:
        return str(self.body["prefix"])


class S3OutputStore:
    """Outputs under an ``s3://`` address: attempt prefixes and a conditional commit marker."""

    scheme = "s3"

    def __init__(self, client: Any = None, grace_seconds: float = GRACE_SECONDS) -> None:
        self._given = client
        self.grace_seconds = grace_seconds

    # --- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def attempt(self, output: Address) -> Iterator[Path]:
        url = _url(output)
        seen = self._marker(url)  # what this attempt replaces, if it commits
        run = _run_id()
        tmp = Path(tempfile.gettempdir()) / f"{_LOCAL_PREFIX}{_SEP}{run}"
        tmp.mkdir(parents=True)
        outcome = "unpublished"
        try:
            yield tmp
            if (tmp / SUCCESS).is_file():
                outcome = self._publish(url, run, tmp, seen)
        except BaseException:
            if outcome == "unpublished":
                with contextlib.suppress(Exception):  # the error in flight is the one to tell
                    self._withdraw(url, seen)
            raise
        else:
            if outcome == "unpublished":
                self._withdraw(url, seen)  # the stale output it was to replace
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def seal(self, attempt: Path, manifest: dict[str, Any]) -> None:
        """Write the manifest, then ``_SUCCESS``, into the local attempt folder: the upload
        and the marker follow when the attempt's block ends."""
        LocalOutputStore().seal(attempt, manifest)

    def _publish(self, url: ObjectUrl, run: str, tmp: Path, seen: Marker | None) -> str:
        prefix = f"{url.key}/{ATTEMPTS}/{run}/"
        files = sorted(
            p.relative_to(tmp).as_posix()
            for p in tmp.rglob("*")
            if p.is_file() and p.name != SUCCESS
        )
        client = self._client(url)
        try:
            for name in files:
                where = f"s3://{url.bucket}/{prefix}{name}"
                self._call(where, client.upload_file, str(tmp / name), url.bucket, prefix + name)
        except BaseException:
            # this process lives on (a watcher): its sweep would not take its own prefix
            with contextlib.suppress(Exception):
                self._delete_prefix(url.bucket, prefix)
            raise
        body = {
            "format": MARKER_FORMAT,
            "attempt": run,
            "prefix": prefix,
            "files": files,
            "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        condition = {"IfMatch": seen.etag} if seen is not None else {"IfNoneMatch": "*"}
        marker = f"{url.key}/{SUCCESS}"
        try:
            answer = self._call(
                url / SUCCESS,
                client.put_object,
                Bucket=url.bucket,
                Key=marker,
                Body=json.dumps(body, sort_keys=True).encode("utf-8"),
                ContentType="application/json",
                **condition,
            )
        except _LostError:
            # another writer committed (or withdrew) this output since the attempt began:
            # theirs stands, this attempt's files go
            log.info("%s: another writer committed it first; this attempt is dropped", url)
            _forget(url)
            self._delete_prefix(url.bucket, prefix)
            return "lost"
        except BaseException:
            # the put's outcome is unknown (a timeout after S3 took it?): the marker says
            try:
                now = self._marker(url, fresh=True)
            except Exception:
                now = None
            if now is None or now.body.get("attempt") != run:
                with contextlib.suppress(Exception):
                    self._delete_prefix(url.bucket, prefix)
                raise
        else:
            _remember(url, Marker(str(answer["ETag"]), body))
        if seen is not None and seen.prefix != prefix:
            self._delete_prefix(url.bucket, seen.prefix)  # the attempt it superseded
        return "published"

    # --- reading -------------------------------------------------------------------------

    def is_committed(self, output: Address) -> bool:
        if isinstance(output, Path):  # an attempt's local folder, between seal and commit
            return (output / SUCCESS).is_file()
        return self._marker(_url(output)) is not None

    def read_manifest(self, output: Address) -> dict[str, Any]:
        known = remembered()
        if known is None or isinstance(output, Path):
            result: dict[str, Any] = json.loads(self.read_bytes(output, MANIFEST))
            return result
        # an attempt's files never change (its prefix is its own): within a pass, a
        # manifest is fetched once
        where = str(self.file(output, MANIFEST))
        data = known.get(where)
        if not isinstance(data, bytes):
            data = self.read_bytes(output, MANIFEST)
            known[str(self.file(output, MANIFEST))] = data  # the attempt it was read from
        result = json.loads(data)
        return result

    def file(self, output: Address, name: str) -> ObjectUrl:
        """The address of a committed output's file (in the attempt its marker names)."""
        if isinstance(output, Path):
            raise StorageError(f"{output}: an S3 output is addressed by its s3:// URL")
        url = _url(output)
        marker = self._marker(url)
        if marker is None:
            raise FileNotFoundError(f"{url}: not committed (no {SUCCESS} marker); run the stage")
        return ObjectUrl(f"s3://{url.bucket}/{marker.prefix}{name}")

    def read_bytes(self, output: Address, name: str) -> bytes:
        if isinstance(output, Path):
            return (output / name).read_bytes()
        for last in (False, True):
            where = self.file(output, name)
            try:
                answer = self._call(
                    where, self._client(where).get_object, Bucket=where.bucket, Key=where.key
                )
            except _LostError as exc:  # withdrawn between the marker and the read
                if not last and _forget(_url(output)):
                    continue  # the attempt remembered was replaced: ask the marker again
                raise FileNotFoundError(f"{where}: withdrawn while it was read") from exc
            data: bytes = answer["Body"].read()
            return data
        raise AssertionError("unreachable")

    # --- withdrawing and sweeping --------------------------------------------------------

    def retract(self, output: Address) -> None:
        """Delete the marker (readers stop at once), then the files it named."""
        url = _url(output)
        self._withdraw(url, self._marker(url))

    def _withdraw(self, url: ObjectUrl, seen: Marker | None) -> None:
        _forget(url)
        if seen is None:
            return
        try:  # only the output this caller saw: a newer commit by someone else stands
            self._call(
                url / SUCCESS,
                self._client(url).delete_object,
                Bucket=url.bucket,
                Key=f"{url.key}/{SUCCESS}",
                IfMatch=seen.etag,
            )
        except _LostError:
            return
        self._delete_prefix(url.bucket, seen.prefix)

    def sweep(self, parent: Address) -> None:
        """Remove attempt prefixes under ``parent`` that no marker names and nobody writes
        any more, and this machine's local attempt folders whose process is gone.

        One paginated listing (1,000 keys a request) finds the attempts and the markers; a
        marker is read only where the listing leaves a doubt (no marker, or more than one
        attempt), so a sweep of settled outputs costs its listing alone, not a GET each."""
        _sweep_local()
        url = _url(parent)
        base = f"{url.key}/" if url.key else ""
        runs: dict[str, dict[str, float]] = {}  # output name -> run -> newest upload time
        marked: set[str] = set()  # outputs whose marker the listing showed
        for page in self._pages(url, base):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(base) :].split("/")
                if len(parts) == 2 and parts[1] == SUCCESS:
                    marked.add(parts[0])
                elif len(parts) > 3 and parts[1] == ATTEMPTS:
                    seen = runs.setdefault(parts[0], {})
                    stamp = obj["LastModified"].timestamp()
                    seen[parts[2]] = max(seen.get(parts[2], 0.0), stamp)
        for name, attempts in runs.items():
            if name in marked and len(attempts) == 1:
                # a marker names an attempt whose files stay until the marker stops naming
                # it: with one attempt listed beside a marker, that attempt is the committed
                continue
            marker = self._marker(url / name, fresh=True)
            committed = marker.body.get("attempt") if marker is not None else None
            for run, newest in attempts.items():
                if run != committed and not self._in_progress(run, newest):
                    self._delete_prefix(url.bucket, f"{base}{name}/{ATTEMPTS}/{run}/")

    def committed(self, parent: Address) -> set[str]:
        """The names of the committed outputs directly under ``parent`` (those with a
        marker), from one paginated listing instead of a GET of each marker."""
        url = _url(parent)
        base = f"{url.key}/" if url.key else ""
        found = set()
        for page in self._pages(url, base):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(base) :].split("/")
                if len(parts) == 2 and parts[1] == SUCCESS:
                    found.add(parts[0])
        return found

    def _pages(self, url: ObjectUrl, prefix: str) -> list[dict[str, Any]]:
        """ListObjectsV2 under ``prefix``, every page (1,000 keys each)."""
        paginator = self._client(url).get_paginator("list_objects_v2")
        pages: list[dict[str, Any]] = self._call(
            url,
            lambda: list(
                paginator.paginate(
                    Bucket=url.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
                )
            ),
        )
        return pages

    def _in_progress(self, run: str, newest: float) -> bool:
        parts = run.split(_SEP)
        if len(parts) == 4 and parts[1].isdigit() and parts[2] == socket.gethostname():
            return pid_alive(int(parts[1]))
        return time.time() - newest < self.grace_seconds  # another machine's: by its age

    # --- S3 ------------------------------------------------------------------------------

    def _marker(self, url: ObjectUrl, *, fresh: bool = False) -> Marker | None:
        """The output's commit marker; the one remembered in this pass unless ``fresh``
        (where acting on a stale one could delete what another writer committed)."""
        known = remembered()
        if not fresh and known is not None and str(url) in known:
            found: Marker = known[str(url)]
            return found
        where = url / SUCCESS
        try:
            answer = self._call(
                where, self._client(url).get_object, Bucket=url.bucket, Key=f"{url.key}/{SUCCESS}"
            )
        except _LostError:
            return None
        try:
            body = json.loads(answer["Body"].read())
            str(body["prefix"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"{where}: not a driftloop commit marker (expected JSON naming the committed "
                f"attempt's prefix: {exc}); delete it and run the stage again"
            ) from exc
        marker = Marker(str(answer["ETag"]), body)
        _remember(url, marker)
        return marker

    def _delete_prefix(self, bucket: str, prefix: str) -> None:
        where = ObjectUrl(f"s3://{bucket}/{prefix}")
        client = self._client(where)
        paginator = client.get_paginator("list_objects_v2")
        pages = self._call(where, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix)))
        keys = [{"Key": o["Key"]} for page in pages for o in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a call
            chunk = keys[start : start + 1000]
            self._call(
                where,
                client.delete_objects,
                Bucket=bucket,
                Delete={"Objects": chunk, "Quiet": True},
            )

    def _client(self, url: str) -> Any:
        """The client for ``url``: the given one, else the one its outputs root's settings
        (the spec's ``storage:``) pick (:mod:`driftloop.core.s3client`)."""
        return self._given if self._given is not None else default_client(url)

    @staticmethod
    def _call(where: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call S3; its failures as driftloop's errors naming the bucket/key and the fix."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return func(*args, **kwargs)
        except ClientError as exc:
            raise _client_error(where, exc) from None
        except S3UploadFailedError as exc:  # boto3's transfer wraps the ClientError
            inner = exc.__context__
            if isinstance(inner, ClientError):
                raise _client_error(where, inner) from None
            raise StorageUnavailableError(
                f"{where}: the upload failed ({type(exc).__name__}); retried on the next pass"
            ) from None
        except NoCredentialsError:
            raise StorageError(
                f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except BotoCoreError as exc:  # no connection, a timeout: may pass
            raise StorageUnavailableError(
                f"{where}: S3 did not answer ({type(exc).__name__}); check AWS_ENDPOINT_URL "
                "(or storage.endpoint_url in driftloop.yaml, which wins) and the network; "
                "retried on the next pass"
            ) from None


def _client_error(where: str, exc: Any) -> Exception:
    """The error to raise for S3's answer ``exc`` (a botocore ClientError) about ``where``."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    if code == "NoSuchBucket":
        return StorageError(
            f"{where}: the bucket {where.partition('://')[2].split('/')[0]!r} does "
            "not exist; create it or fix the outputs address"
        )
    if code in _LOST or status in ("404", "409", "412"):
        return _LostError(code)
    if code in _TRANSIENT or status.startswith("5"):
        return StorageUnavailableError(
            f"{where}: S3 answered {code or status}; retried on the next pass"
        )
    hint = {
        "AccessDenied": "give these credentials s3:GetObject, s3:PutObject, "
        "s3:DeleteObject and s3:ListBucket on it",
        "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID / the profile",
        "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY / the profile",
    }.get(code, "check the address and the credentials' permissions")
    return StorageError(
        f"{where}: S3 refused ({code or status}: {error.get('Message', '')}); {hint}"
    )


class _LostError(Exception):
    """A conditional request lost, or the object is not there (404/409/412)."""


def _remember(url: ObjectUrl, marker: Marker) -> None:
    known = remembered()
    if known is not None:
        known[str(url)] = marker


def _forget(url: ObjectUrl) -> bool:
    """Forget a remembered marker; whether there was one."""
    known = remembered()
    return known is not None and known.pop(str(url), None) is not None


def default_client(url: str) -> Any:
    """The boto3 S3 client for an output address: its outputs root's settings (the spec's
    ``storage:``) over the AWS environment, shared with the sources
    (:func:`driftloop.core.s3client.client`)."""
    return s3client.client(s3client.settings_for(url))


def _url(address: Address) -> ObjectUrl:
    url = ObjectUrl(str(address))
    if not url.lower().startswith("s3://") or not url.bucket:
        raise StorageError(f"{address}: not an s3://bucket/prefix address")
    return url


def _run_id() -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rand = os.urandom(4).hex()
    return f"{stamp}{_SEP}{os.getpid()}{_SEP}{socket.gethostname()}{_SEP}{rand}"


def _sweep_local() -> None:
    """This machine's attempt folders whose process died before its block ended."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            parts = entry.name.split(_SEP)
            if (
                len(parts) == 5
                and parts[0] == _LOCAL_PREFIX
                and parts[2].isdigit()
                and parts[3] == socket.gethostname()
                and not pid_alive(int(parts[2]))
            ):
                shutil.rmtree(entry.path, ignore_errors=True)


# Plain objects beside the committed outputs (monitoring reports): one PUT is atomic on S3,
# so a reader sees a whole object or none, with no marker needed.


def put_object(url: str, data: bytes, content_type: str) -> ObjectUrl:
    where = _url(url)
    S3OutputStore._call(
        where,
        default_client(where).put_object,
        Bucket=where.bucket,
        Key=where.key,
        Body=data,
        ContentType=content_type,
    )
    return where


def get_object(url: str) -> bytes:
    where = _url(url)
    try:
        answer = S3OutputStore._call(
            where, default_client(where).get_object, Bucket=where.bucket, Key=where.key
        )
    except _LostError as exc:
        raise FileNotFoundError(f"{where}: no such object") from exc
    data: bytes = answer["Body"].read()
    return data


def _listing(folder: str) -> tuple[ObjectUrl, list[dict[str, Any]]]:
    """One delimited listing of ``folder``: its pages (objects and common prefixes)."""
    where = _url(folder)
    prefix = f"{where.key}/" if where.key else ""
    paginator = default_client(where).get_paginator("list_objects_v2")
    pages = S3OutputStore._call(
        where,
        lambda: list(paginator.paginate(Bucket=where.bucket, Prefix=prefix, Delimiter="/")),
    )
    return where, pages


def list_objects(folder: str, suffix: str = "") -> list[ObjectUrl]:
    """The objects directly in ``folder`` whose names end with ``suffix``, sorted."""
    where, pages = _listing(folder)
    return sorted(
        ObjectUrl(f"s3://{where.bucket}/{o['Key']}")
        for page in pages
        for o in page.get("Contents", [])
        if o["Key"].endswith(suffix)
    )


def list_folders(folder: str) -> list[ObjectUrl]:
    """The "folders" directly in ``folder`` (the common prefixes of one delimited listing),
    sorted: a log's date partitions are found without listing every part."""
    where, pages = _listing(folder)
    return sorted(
        ObjectUrl(f"s3://{where.bucket}/{p['Prefix'].rstrip('/')}")
        for page in pages
        for p in page.get("CommonPrefixes", [])
    )
