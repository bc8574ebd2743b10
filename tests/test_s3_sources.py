"""Sources on S3: a moto server on 127.0.0.1 driven through the real boto3 (and Polars).

The store's own contract runs in tests/test_storage.py; here, what is S3's alone (versions,
ETags, keys with spaces), then a project whose sources live in a bucket, end to end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driftloop.core import s3store
from driftloop.core.s3store import S3RawStore

from .fixtures.moto import ACCESS_KEY, SECRET_KEY, S3Env
from .helpers import TINY_SPEC, write_spec

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


# --- a project whose sources are in a bucket, through the real CLI ---------------------

HANG_GUARD = 900  # seconds: a guard against a hung run, never a timing assertion


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, with the test's AWS variables (s3_env set them)."""
    return subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def shop_week(tmp_path: Path, week: int) -> dict[str, bytes]:
    """The built-in shop example's week ``week``: {table: CSV bytes} (small, for speed)."""
    from driftloop.examples import raw_file, write_batch

    scratch = tmp_path / "generated"
    write_batch(scratch, "shop", batch=week, rows=600, seed=3)
    return {t: raw_file(scratch, t, week).read_bytes() for t in ("orders", "customers")}


def s3_shop_project(tmp_path: Path, s3: S3Env, extra: str = "") -> Path:
    """The shop example with its two sources in the bucket (outputs stay local)."""
    from driftloop.examples import get_example

    project = tmp_path / "shop"
    spec = get_example("shop").spec
    for table in ("orders", "customers"):
        spec = spec.replace(
            f"path: data/raw/{table}/*.csv", f"path: {s3.url(f'raw/{table}/')}*.csv"
        )
    write_spec(project, spec + extra)
    return project


def everything_written(project: Path, *texts: str) -> str:
    """Every output the project holds (manifests, reports, the state database, logs, MLflow's
    store) as text, with the CLI's own output: where a secret must never appear."""
    parts = list(texts)
    for path in sorted(project.rglob("*")):
        if path.is_file():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_a_project_with_its_sources_in_a_bucket_runs_end_to_end(
    s3_env: S3Env, tmp_path: Path
) -> None:
    project = s3_shop_project(tmp_path, s3_env)
    week1 = shop_week(tmp_path, 1)
    for table, data in week1.items():
        s3_env.put(f"raw/{table}/{table}-0001.csv", data)
    s3_env.put("raw/orders/notes.txt", b"not data")  # in the folder, matched by no glob

    first = cli("run", "-p", str(project))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ingested 2 new file(s)" in first.stdout, first.stdout
    assert "notes.txt" in first.stdout  # reported as unmatched, never read
    assert "trained v1" in first.stdout or "v1" in first.stdout, first.stdout

    from driftloop.core.layout import Layout, is_complete
    from driftloop.core.state import StateDB

    layout = Layout(project)
    with StateDB(layout.state_db) as db:
        (batch,) = db.batches()
        files = db.batch_files(batch.batch_id)
    assert sorted(f.path for f in files) == [
        s3_env.url("raw/customers/customers-0001.csv"),
        s3_env.url("raw/orders/orders-0001.csv"),
    ]
    assert {f.sha256 for f in files} == {hashlib.sha256(d).hexdigest() for d in week1.values()}
    assert is_complete(layout.processed / batch.batch_id)
    assert is_complete(layout.features / batch.batch_id)
    assert not list(layout.state_dir.glob("raw-copies-*"))  # the local copies are gone

    # settled: nothing changed in the bucket, nothing to do (the quick answer lists it)
    status = cli("status", "-p", str(project))
    assert status.returncode == 0, status.stdout + status.stderr
    from driftloop.orchestration.settled import quick_settled

    assert quick_settled(project) is not None
    settled = cli("run", "-p", str(project))
    assert settled.returncode == 0, settled.stdout + settled.stderr
    assert settled.stdout.strip().startswith("unmatched: s3://"), settled.stdout  # that alone
    s3_env.put("raw/customers/late.csv", week1["customers"])  # an object added ...
    assert quick_settled(project) is None  # ... un-settles it
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key="raw/customers/late.csv")

    # the same content under another key: skipped, as a local file's re-upload is
    s3_env.put("raw/orders/orders-0001-copy.csv", week1["orders"])
    again = cli("run", "-p", str(project))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipped s3://" in again.stdout and "same content as" in again.stdout, again.stdout

    # an object overwritten in place (same key, new content): refused, never counted twice
    s3_env.put("raw/orders/orders-0001.csv", week1["orders"] + week1["orders"].splitlines(True)[1])
    changed = cli("run", "-p", str(project))
    assert "not ingested" in changed.stdout and "changed in place" in changed.stdout
    with StateDB(layout.state_db) as db:
        assert len(db.batches()) == 1

    # a new week landing un-settles the project and is taken
    s3_env.put("raw/orders/orders-0001.csv", week1["orders"])  # the original content back
    week2 = shop_week(tmp_path, 2)
    for table, data in week2.items():
        s3_env.put(f"raw/{table}/{table}-0002.csv", data)
    second = cli("run", "-p", str(project))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "ingested 2 new file(s)" in second.stdout, second.stdout
    with StateDB(layout.state_db) as db:
        assert len(db.batches()) == 2

    everything = everything_written(
        project, *(r.stdout + r.stderr for r in (first, status, settled, again, changed, second))
    )
    assert s3_env.url("raw/orders/orders-0001.csv") in everything  # the outputs were read
    assert SECRET_KEY not in everything
    assert ACCESS_KEY not in everything


DAY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bike_sharing" / "day.csv"


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_init_from_an_object_writes_a_spec_whose_source_is_its_folder(
    s3_env: S3Env, tmp_path: Path, kind: str
) -> None:
    """``init --from s3://...`` reads the sample through the store (a key with spaces and
    letters outside ASCII, as landed); the first run takes the sample from the bucket."""
    import polars as pl

    data = DAY.read_bytes()
    if kind == "parquet":
        out = tmp_path / "day.parquet"
        pl.read_csv(DAY).write_parquet(out)
        data = out.read_bytes()
    key = f"landing/bike days – Zürich.{kind}"
    s3_env.put(key, data)
    project = tmp_path / "bike"
    init = cli("init", "-p", str(project), "--from", s3_env.url(key), "--target", "cnt")
    assert init.returncode == 0, init.stdout + init.stderr
    text = (project / "driftloop.yaml").read_text()
    pattern = s3_env.url("landing/*.parquet" if kind == "parquet" else "landing/*")
    assert f"path: {pattern}" in text, text
    assert f"format: {kind}" in text
    assert not (project / "data" / "raw").exists()  # nothing copied: the bucket is the source
    run = cli("run", "-p", str(project))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ingested 1 new file(s)" in run.stdout, run.stdout
    assert "731 rows in, 731 ok" in run.stdout, run.stdout
    from driftloop.core.state import StateDB

    with StateDB(project / ".driftloop" / "state.db") as db:
        (batch,) = db.batches()
        (taken,) = db.batch_files(batch.batch_id)
    assert taken.path == s3_env.url(key)
    assert taken.sha256 == hashlib.sha256(data).hexdigest()


STORAGE_SPEC = (
    TINY_SPEC
    + """storage:
{storage}
"""
)


def test_the_spec_storage_section_picks_the_endpoint_and_region(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``storage.endpoint_url`` wins over AWS_ENDPOINT_URL (here pointed at nothing)."""
    import driftloop

    s3_env.put("raw/a.csv", "x,y\n1,2\n2,4\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    project = tmp_path / "p"
    storage = f"  endpoint_url: {s3_env.endpoint}\n  region: eu-west-1"
    write_spec(project, STORAGE_SPEC.format(path=s3_env.url("raw/*.csv"), storage=storage))
    result = driftloop.run(project)
    assert result.ingest.batch is not None
    assert [f.path for f in result.ingest.new_files] == [s3_env.url("raw/a.csv")]
    assert [(r.stage, r.outcome) for r in result.reports] == [("prep", "ran"), ("features", "ran")]
    from driftloop.orchestration.settled import quick_settled

    assert quick_settled(project) is not None  # the quick answer lists with the same settings


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("  aws_secret_access_key: abc", "aws_secret_access_key"),
        ("  endpoint_url: http://key:secret@127.0.0.1:9000", "holds credentials"),
        ("  endpoint_url: 127.0.0.1:9000", "must be an http:// or https:// URL"),
    ],
)
def test_credentials_have_no_place_in_the_storage_section(
    tmp_path: Path, storage: str, expected: str
) -> None:
    from driftloop.core.errors import SpecError
    from driftloop.core.spec import load_spec

    write_spec(tmp_path, STORAGE_SPEC.format(path="s3://b/raw/*.csv", storage=storage))
    with pytest.raises(SpecError, match=expected) as raised:
        load_spec(tmp_path)
    assert "secret" not in str(raised.value).replace("aws_secret_access_key", "")
