"""A project whose outputs live on S3 (``outputs: s3://...``): local raw files, processed
rows, features and quarantine on the moto bucket through the real CLI, boto3 and Polars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import driftloop
from driftloop.core.layout import Layout, is_complete, read_manifest, scan_output
from driftloop.core.state import StateDB
from driftloop.core.urls import ObjectUrl
from driftloop.features.stage import read_features

from .fixtures.moto import SECRET_KEY, S3Env
from .helpers import write_spec
from .test_lifecycle import SPEC, land

pytestmark = pytest.mark.slow

QUICK = "monitoring: {permutations: 99}\n"


def _project(tmp_path: Path, s3: S3Env) -> Path:
    project = tmp_path / "p"
    write_spec(project, SPEC + QUICK + f"outputs: {s3.url('proj')}\n")
    return project


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,  # a hang guard
    )


def _keys(s3: S3Env, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _attempts(s3: S3Env) -> dict[str, set[str]]:
    """Output -> the attempt runs stored under it."""
    found: dict[str, set[str]] = {}
    for key in _keys(s3, "proj/"):
        parts = key.split("/")
        if "_attempts" in parts:
            at = parts.index("_attempts")
            found.setdefault("/".join(parts[:at]), set()).add(parts[at + 1])
    return found


def _no_stray_attempts(s3: S3Env) -> None:
    """Every attempt left on the bucket is the one its output's marker names."""
    for output, runs in _attempts(s3).items():
        marker = s3.client().get_object(Bucket=s3.bucket, Key=f"{output}/_SUCCESS")
        assert runs == {json.loads(marker["Body"].read())["attempt"]}, output


def test_a_project_with_outputs_on_s3_runs_end_to_end(tmp_path: Path, s3_env: S3Env) -> None:
    project = _project(tmp_path, s3_env)
    land(project, "a.csv", 300, seed=1)
    first = _cli(project, "run")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    land(project, "b.csv", 300, seed=2, start_day=5)
    second = _cli(project, "run")  # a second batch: checked against the champion, retrained
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    layout = Layout(project)
    assert layout.processed == f"s3://{s3_env.bucket}/proj/processed"
    for local in (
        "processed",
        "features",
        "quarantine",
        "monitoring/batches",
        "monitoring/reports",
    ):
        assert not (project / "data" / local).exists(), local  # nothing written here
    with StateDB(layout.state_db) as db:
        batches = [b.batch_id for b in db.batches()]
    assert len(batches) == 2
    rows = 0
    for b in batches:
        assert is_complete(layout.processed / b) and is_complete(layout.features / b)
        assert read_manifest(layout.processed / b)["rows_in"] == 300
        frame = driftloop.read_features(str(project), b).collect()  # through the marker
        rows += frame.height
        assert "x1" in frame.columns
    assert rows == 600
    assert is_complete(layout.batch_checks / batches[1])  # checked against the champion
    assert "champion" in _cli(project, "models").stdout  # trained, registered, promoted
    url = str(layout.features / batches[1])
    checked = _cli(project, "monitor", "--current", url, "--json")
    assert checked.returncode in (0, 3, 4), checked.stderr[-3000:]  # a verdict, not an error
    report = json.loads(checked.stdout)
    assert report["current"]["path"] == url
    assert report["current"]["rows"] == 300
    _no_stray_attempts(s3_env)
    reports = _keys(s3_env, "proj/monitoring/reports/")  # the second batch's check, the command's
    assert [k.rsplit(".", 1)[1] for k in reports] == ["html", "json"] * 2, reports
    status = _cli(project, "status")
    assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
    assert "last monitoring (" in status.stdout  # read from the bucket
    again = _cli(project, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout, again.stdout
    shown = "".join(r.stdout + r.stderr for r in (first, second, status, checked, again))
    assert SECRET_KEY not in shown
    for key in _keys(s3_env, "proj/"):
        body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
        assert SECRET_KEY.encode() not in body, key
    for path in project.rglob("*"):  # the state database, logs, the registry, reports
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


# Dies when the given output's marker is about to be put: the attempt's files are uploaded,
# nothing is committed (a kill -9 at the worst moment of a stage).
DIE_AT_MARKER = """
import os, sys
from pathlib import Path
from botocore.client import BaseClient
call = BaseClient._make_api_call
def dying(self, op, params):
    if op == "PutObject" and params["Key"].endswith("/_SUCCESS") and sys.argv[2] in params["Key"]:
        os._exit(9)
    return call(self, op, params)
BaseClient._make_api_call = dying
from driftloop.pipeline import run
run(Path(sys.argv[1]), quick=False)
sys.exit("the run was not interrupted")
"""


@pytest.mark.parametrize("stage", ["processed", "features"])
def test_a_kill_during_a_stage_on_s3_leaves_nothing_half_visible(
    tmp_path: Path, s3_env: S3Env, stage: str
) -> None:
    project = _project(tmp_path, s3_env)
    land(project, "a.csv", 300, seed=1)
    died = subprocess.run(
        [sys.executable, "-c", DIE_AT_MARKER, str(project), f"/{stage}/"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert died.returncode == 9, died.stderr[-3000:]
    layout = Layout(project)
    with StateDB(layout.state_db) as db:
        [batch] = [b.batch_id for b in db.batches()]
    output = ObjectUrl(layout.output_root) / stage / batch
    assert not is_complete(output)  # uploaded, never committed: not visible
    assert _attempts(s3_env).get(f"proj/{stage}/{batch}")  # the abandoned attempt is there
    done = _cli(project, "run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _no_stray_attempts(s3_env)  # swept by the pass
    assert read_features(layout, batch).collect().height == 300  # processed once, whole
    with StateDB(layout.state_db) as db:
        assert len(db.batches()) == 1  # the file was ingested once


def test_a_kill_during_the_check_of_a_new_batch_on_s3_repeats_nothing(
    tmp_path: Path, s3_env: S3Env
) -> None:
    """The second batch's check against the champion is killed before its marker: the next
    run checks it once, and nothing of the first batch is done again."""
    project = _project(tmp_path, s3_env)
    land(project, "a.csv", 300, seed=1)
    assert _cli(project, "run").returncode == 0
    before = {k for k in _keys(s3_env, "proj/") if "/_attempts/" in k}
    land(project, "b.csv", 300, seed=2, start_day=5)
    died = subprocess.run(
        [sys.executable, "-c", DIE_AT_MARKER, str(project), "/monitoring/batches/"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert died.returncode == 9, died.stderr[-3000:]
    layout = Layout(project)
    with StateDB(layout.state_db) as db:
        first, second = (b.batch_id for b in db.batches())
    assert not is_complete(layout.batch_checks / second)
    done = _cli(project, "run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert is_complete(layout.batch_checks / second)
    _no_stray_attempts(s3_env)
    after = {k for k in _keys(s3_env, "proj/") if "/_attempts/" in k}
    assert {k for k in after if f"/{first}/" in k} == before  # the first batch untouched
    assert read_features(layout, second).collect().height == 300


def test_bad_rows_are_quarantined_on_s3_with_their_reasons(tmp_path: Path, s3_env: S3Env) -> None:
    project = _project(tmp_path, s3_env)
    land(project, "a.csv", 300, seed=1)
    raw = project / "data" / "raw" / "s" / "a.csv"
    lines = raw.read_text().splitlines()
    for i in (5, 50, 150):  # x1 is a float column: a word there breaks the contract
        cells = lines[i].split(",")
        cells[1] = "oops"
        lines[i] = ",".join(cells)
    raw.write_text("\n".join(lines) + "\n")
    done = _cli(project, "run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    layout = Layout(project)
    with StateDB(layout.state_db) as db:
        [batch] = [b.batch_id for b in db.batches()]
    assert f"rows and reasons: s3://{s3_env.bucket}/proj/quarantine/{batch}/" in done.stdout
    manifest = read_manifest(layout.processed / batch)
    assert (manifest["rows_ok"], manifest["rows_quarantined"]) == (297, 3)
    bad = scan_output(layout.quarantine / batch, "rows.parquet").collect()
    assert bad.height == 3
    assert all("x1" in str(reason) for reason in bad.to_dicts())
