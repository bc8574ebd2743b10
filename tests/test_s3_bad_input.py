"""Bad input on S3 sources, against a real moto server (issue 13, section 4): a bucket that
does not exist, wrong credentials, an endpoint that does not answer, an object deleted
between the listing and the read. Each is a clear error naming the bucket or key and the fix;
a transient one is retried; nothing is lost; the secret key is never shown.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import driftloop
from driftloop.core.layout import Layout, is_complete
from driftloop.core.spec import load_spec
from driftloop.core.stage import Context, StageCall
from driftloop.core.state import StateDB
from driftloop.core.storage import candidate_files, placement
from driftloop.ingest.stage import ingest
from driftloop.orchestration.runner import run_call

from .fixtures.moto import SECRET_KEY, MotoServer, S3Env, moto_command, start_moto
from .helpers import TINY_SPEC, write_spec

HANG_GUARD = 600  # seconds: a guard against a hung command, never a timing assertion
ROWS = "x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(1, 41))

SPEC = TINY_SPEC


def project_reading(tmp_path: Path, path: str) -> Path:
    project = tmp_path / "p"
    write_spec(project, SPEC.format(path=path))
    return project


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    shown = done.stdout + done.stderr
    assert SECRET_KEY not in shown, shown  # not in an error, not in a traceback (-v)
    return done


def free_port() -> int:
    """A port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_bucket_that_does_not_exist_names_it_and_the_fix(s3_env: S3Env, tmp_path: Path) -> None:
    project = project_reading(tmp_path, "s3://no-such-bucket-here/raw/*.csv")
    for verbose in ([], ["-v"]):
        done = cli(*verbose, "run", "-p", str(project))
        assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "error: source 'points' (path 's3://no-such-bucket-here/raw/*.csv'): "
        "s3://no-such-bucket-here: the bucket 'no-such-bucket-here' does not exist at "
        f"{s3_env.endpoint}"
    ), error
    assert "check the bucket name in the source's path" in error and "create the bucket" in error


@pytest.fixture(scope="module")
def guarded_moto() -> Iterator[MotoServer]:
    """A moto server that checks credentials (moto accepts any unless told otherwise)."""
    if moto_command() is None:
        pytest.skip("moto is not installed; pip install -e '.[dev]' to run the S3 tests")
    server = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        yield server
    finally:
        server.stop()


def test_wrong_credentials_are_refused_with_the_fix_and_never_shown(
    s3_env: S3Env, guarded_moto: MotoServer, tmp_path: Path
) -> None:
    project = project_reading(tmp_path, "s3://landing/raw/*.csv")
    for verbose in ([], ["-v"]):
        done = cli(*verbose, "run", "-p", str(project), AWS_ENDPOINT_URL=guarded_moto.endpoint)
        assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "source 'points' (path 's3://landing/raw/*.csv'): s3://landing: " in error, error
    assert "S3 refused the request (InvalidAccessKeyId)" in error
    assert "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in error
    assert "Traceback" in done.stderr  # -v shows it: grepped for the secret by cli()


def test_an_endpoint_that_does_not_answer_is_transient_and_loses_nothing(
    s3_env: S3Env, tmp_path: Path
) -> None:
    s3_env.put("raw/a.csv", ROWS)
    project = project_reading(tmp_path, s3_env.url("raw/*.csv"))
    dead = f"http://127.0.0.1:{free_port()}"
    down = cli("run", "-p", str(project), AWS_ENDPOINT_URL=dead)
    assert down.returncode == 5, down.stdout + down.stderr  # run again later
    error = down.stderr.strip().splitlines()[-1]
    assert error.startswith(
        f"error: source 'points' (path '{s3_env.url('raw/*.csv')}'): {s3_env.url()[:-1]}: "
        f"the S3 endpoint {dead} did not answer"
    ), error
    assert "nothing was lost" in error
    up = cli("run", "-p", str(project))  # the endpoint back: the file is taken
    assert up.returncode == 0, up.stdout + up.stderr
    assert "ingested 1 new file(s)" in up.stdout and "40 rows in, 40 ok" in up.stdout


def test_a_stage_that_meets_an_endpoint_down_is_retried_by_the_runner(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's transient/permanent split: a read that fails because S3 stopped
    answering after the pass listed the sources is recorded to be retried (not a failure of
    the data), and the retry succeeds."""
    s3_env.put("raw/a.csv", ROWS)
    project = project_reading(tmp_path, s3_env.url("raw/*.csv"))
    taken = driftloop.run_stage(project, "ingest")
    batch = taken.manifest["batch_id"]
    assert batch is not None
    spec, layout = load_spec(project), Layout(project)
    with StateDB(layout.state_db) as db:
        ctx = Context(spec, layout, db)
        ctx.memo["placement"] = placement(candidate_files(spec, layout))  # as a pass lists
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # then down
        failed = run_call(ctx, StageCall("prep", batch))
    assert failed.outcome == "failed"
    assert failed.error is not None and "did not answer" in failed.error
    assert not failed.error.startswith("unexpected")  # an error of ours, with its fix
    with StateDB(Layout(project).state_db) as db:
        info = db.run_info(str(failed.key))
    assert info is not None and info["status"] == "error"  # retried, not failed for good
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    retried = driftloop.run_stage(project, "prep", batch_id=batch)
    assert retried.outcome == "ran" and retried.manifest["rows_ok"] == 40


def test_an_object_deleted_between_the_listing_and_the_read_is_not_lost(
    s3_env: S3Env, tmp_path: Path
) -> None:
    s3_env.put("raw/a.csv", ROWS)
    s3_env.put("raw/b.csv", ROWS + "99,198\n")
    project = project_reading(tmp_path, s3_env.url("raw/*.csv"))
    spec, layout = load_spec(project), Layout(project)
    listed = candidate_files(spec, layout)
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key="raw/a.csv")
    with StateDB(layout.state_db) as db:
        found = ingest(spec, layout, db, listed_files=listed)
        assert [f.path for f in found.new_files] == [s3_env.url("raw/b.csv")]  # the others go on
        assert db.raw_file_at(s3_env.url("raw/a.csv")) is None  # not recorded as taken
    s3_env.put("raw/a.csv", ROWS)  # landed again: the next pass takes it
    again = driftloop.run(project)
    assert again.ingest.batch is not None
    assert [f.path for f in again.ingest.new_files] == [s3_env.url("raw/a.csv")]


def test_an_object_deleted_after_ingest_is_quarantined_with_the_reason(
    s3_env: S3Env, tmp_path: Path
) -> None:
    s3_env.put("raw/a.csv", ROWS)
    s3_env.put("raw/b.csv", ROWS + "99,198\n")
    project = project_reading(tmp_path, s3_env.url("raw/*.csv"))
    batch = driftloop.run_stage(project, "ingest").manifest["batch_id"]
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key="raw/a.csv")
    prep = driftloop.run_stage(project, "prep", batch_id=batch)
    assert prep.outcome == "ran"
    (gone,) = prep.manifest["files_quarantined"]
    assert gone["path"] == s3_env.url("raw/a.csv")
    assert "the file is gone since it was ingested" in gone["error"]
    assert prep.manifest["rows_ok"] == 41  # b's rows: the batch goes on


def test_an_object_overwritten_between_ingest_and_prep_is_not_read(
    s3_env: S3Env, tmp_path: Path
) -> None:
    """The local copy prep reads is hashed while it streams: content other than the ledger's
    is never read as if it were the file that was taken."""
    s3_env.put("raw/a.csv", ROWS)
    project = project_reading(tmp_path, s3_env.url("raw/*.csv"))
    batch = driftloop.run_stage(project, "ingest").manifest["batch_id"]
    forged = ROWS.replace("1,2\n", "1,3\n")  # same size, new content
    s3_env.put("raw/a.csv", forged)
    prep = driftloop.run_stage(project, "prep", batch_id=batch)
    assert prep.outcome == "failed"  # its only file could not be read: nothing to prepare
    assert prep.error is not None and "the file changed since it was ingested" in prep.error
    assert hashlib.sha256(ROWS.encode()).hexdigest()[:12] in prep.error
    assert not is_complete(Layout(project).processed / batch)  # nothing published from it


def test_an_object_overwritten_at_once_with_as_many_bytes_is_refused(
    s3_env: S3Env, tmp_path: Path
) -> None:
    """S3 keeps times to the second; the version (here the ETag) tells two versions apart
    (whether or not they land in the same second: ``test_a_new_version_is_a_new_sighting``
    shows the same second)."""
    s3_env.put("raw/a.csv", ROWS)
    project = project_reading(tmp_path, s3_env.url("raw/*.csv"))
    assert driftloop.run(project).ingest.batch is not None
    s3_env.put("raw/a.csv", ROWS.replace("1,2\n", "1,3\n"))  # same size
    again = driftloop.run(project)
    assert again.ingest.batch is None
    (changed,) = again.ingest.changed
    assert changed.startswith(f"{s3_env.url('raw/a.csv')}: changed in place since it was")


def test_a_new_version_is_a_new_sighting_within_the_same_second() -> None:
    """The ledger's sightings are keyed by (size, mtime_ns): two versions stamped with the
    same second must differ there, and one version must always give the same time."""
    from datetime import UTC, datetime

    from driftloop.core.s3store import _mtime_ns

    second = datetime(2026, 12, 2, 9, 30, 15, 250_000, tzinfo=UTC)
    first, other = _mtime_ns(second, '"etag-a"'), _mtime_ns(second, '"etag-b"')
    assert first != other
    assert first == _mtime_ns(second.replace(microsecond=0), '"etag-a"')  # a HEAD's stamp
    base = int(second.replace(microsecond=0).timestamp()) * 1_000_000_000
    assert base <= first < base + 1_000_000_000 and base <= other < base + 1_000_000_000


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("SlowDown", 503, "StorageUnavailableError"),
        ("InternalError", 500, "StorageUnavailableError"),
        ("RequestTimeout", 400, "StorageUnavailableError"),
        ("AccessDenied", 403, "StorageAccessError"),
        ("NoSuchBucket", 404, "BucketNotFoundError"),
        ("NoSuchKey", 404, "FileNotFoundError"),
    ],
)
def test_what_s3_answers_becomes_an_error_that_says_what_to_do(
    code: str, status: int, expected: str
) -> None:
    """The answers moto does not give on demand (throttling, 5xx), as botocore raises them:
    transient ones are StorageUnavailableError (retried), the others are not."""
    from botocore.exceptions import ClientError

    from driftloop.core.errors import TransientError
    from driftloop.core.s3store import S3RawStore

    store = S3RawStore(endpoint_url="http://127.0.0.1:9", region="us-east-1")
    answer = {
        "Error": {"Code": code, "Message": "..."},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    with pytest.raises(Exception) as raised, store._calling("landing", "raw/a.csv"):
        raise ClientError(answer, "GetObject")
    assert type(raised.value).__name__ == expected
    assert isinstance(raised.value, TransientError) == (expected == "StorageUnavailableError")
    assert "s3://landing" in str(raised.value)


def test_without_boto3_an_s3_source_says_which_extra_to_install(tmp_path: Path) -> None:
    project = project_reading(tmp_path, "s3://landing/raw/*.csv")
    code = (  # boto3 made unimportable, as where the extra is not installed
        "import sys\n"
        "sys.modules['boto3'] = None\n"
        "from driftloop.cli import main\n"
        f"sys.argv = ['driftloop', 'run', '-p', {str(project)!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: source 'points' (path 's3://landing/raw/*.csv'): s3:// sources need boto3, "
        "which is not installed; install the S3 extra: pip install 'driftloop[s3]'\n"
    )
