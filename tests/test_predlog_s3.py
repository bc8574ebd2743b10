"""The prediction and feedback logs on shared storage: when a project's outputs are on S3,
serving writes its log parts there from its background thread, and ``driftloop monitor``
run from another folder on the same spec reads them (issue 15: the scheduled monitor of the
AWS and Airflow exports has a log to read). Against the moto server."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftloop.core.layout import Layout
from driftloop.core.logparts import any_parts, list_parts, read_part
from driftloop.core.urls import ObjectUrl
from driftloop.serving.logbook import FrameLog

from .fixtures.moto import SECRET_KEY, S3Env
from .helpers import write_spec
from .serving_helpers import SERVING, serving
from .test_lifecycle import SPEC, land
from .test_serving_log import rows

GUARD = 300.0  # seconds: a hang guard for what a test waits for, never a speed claim


def _until(what: str, condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {GUARD:.0f} s for {what}")
        time.sleep(0.02)  # a poll interval; the condition decides


def _keys(s3: S3Env, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def test_replicas_write_their_own_parts_and_a_window_lists_its_days(s3_env: S3Env) -> None:
    folder = ObjectUrl(s3_env.url("proj")) / "monitoring" / "predictions"
    replicas = [FrameLog(folder, buffer_rows=100, flush_rows=100, flush_seconds=60) for _ in "ab"]
    day1, day2 = datetime(2026, 11, 27, 12, tzinfo=UTC), datetime(2026, 11, 28, 12, tzinfo=UTC)
    for i, log in enumerate(replicas):  # the same day, the same second, the same sequence
        assert log.append(rows(2, day1, start=10 * i))
        assert log.append(rows(1, day2, start=10 * i + 5))
        assert log.flush() == 3
    keys = _keys(s3_env, "proj/monitoring/predictions/")
    assert len(keys) == 4 and len(set(keys)) == 4  # no replica overwrote another's part
    assert {k.split("/")[3] for k in keys} == {"date=2026-11-27", "date=2026-11-28"}
    assert all(k.split("/")[4].startswith("part-") for k in keys)
    assert any_parts(folder)
    first = list_parts(folder, date(2026, 11, 27), date(2026, 11, 27))  # one day's partition
    assert len(first) == 2 and all("date=2026-11-27" in str(p) for p in first)
    frame = pl.concat([read_part(p) for p in list_parts(folder)])
    assert sorted(frame["__request_id"]) == ["r0", "r1", "r10", "r11", "r15", "r5"]
    assert list_parts(folder, date(2026, 12, 1)) == []
    assert not any_parts(ObjectUrl(s3_env.url("elsewhere")))


def test_a_refused_put_keeps_the_rows_and_retries_until_the_bucket_is_there(
    s3_env: S3Env, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = f"t-{uuid.uuid4().hex[:20]}"  # not created yet: every PUT fails
    folder = ObjectUrl(f"s3://{bucket}/proj/monitoring/feedback")
    dropped: list[int] = []
    log = FrameLog(folder, buffer_rows=5, flush_rows=1, flush_seconds=0.05, on_drop=dropped.append)
    caplog.set_level(logging.WARNING, logger="driftloop.serving.logbook")
    log.start()
    try:
        now = datetime.now(UTC)
        assert log.append(rows(3, now))
        _until("two failed flushes", lambda: log.failures >= 2)  # retried, not given up
        assert log.pending == 3 and log.dropped == 0 and log.written == 0
        assert not log.append(rows(3, now, start=3))  # beyond buffer_rows: dropped, counted
        assert log.dropped == 3 and dropped == [3]
        said = "\n".join(r.getMessage() for r in caplog.records)
        assert f"s3://{bucket}/proj/monitoring/feedback/date=" in said  # bucket and key
        assert "does not exist" in said and "kept for the next flush" in said
        assert SECRET_KEY not in said
        s3_env.client().create_bucket(Bucket=bucket)
        _until("the kept rows written", lambda: log.written == 3)
        assert log.pending == 0
    finally:
        log.close()
    parts = list_parts(folder)
    assert len(parts) == 1 and read_part(parts[0]).height == 3


def drifted_traffic(client: object, rng: np.random.Generator, requests: int) -> int:
    """Requests whose inputs moved (x1 by two standard deviations) and whose labels, sent as
    feedback, follow a turned-around concept (y falls with x1); the rows sent."""
    sent = 0
    for _ in range(requests):
        x1 = rng.normal(2.0, 1.0, 50)  # the inputs moved by two standard deviations
        x2 = rng.normal(size=50)
        c = rng.choice(["a", "b", "c"], 50)
        records = [
            {"t": "2024-02-01 10:00:00", "x1": float(a), "x2": float(b), "c": str(k)}
            for a, b, k in zip(x1, x2, c, strict=True)
        ]
        answer = client.post("/predict", json=records)  # type: ignore[attr-defined]
        assert answer.status_code == 200, answer.text
        rid = answer.json()["request_id"]
        truth = np.where(rng.random(50) < 1 / (1 + np.exp(1.5 * x1 + x2)), "yes", "no")
        labels = [{"request_id": rid, "record": i, "label": str(y)} for i, y in enumerate(truth)]
        assert client.post("/feedback", json=labels).status_code == 202  # type: ignore[attr-defined]
        sent += 50
    return sent


@pytest.mark.slow
def test_a_monitor_elsewhere_reads_what_serving_logged_on_s3(tmp_path: Path, s3_env: S3Env) -> None:
    from driftloop.pipeline import run

    served = tmp_path / "serving"
    # the registry is shared (here a SQLite file both folders name; a server in the cloud)
    spec = (
        SPEC
        + SERVING
        + "retrain: {every_batches: 0}\nmonitoring: {permutations: 99}\n"
        + f"outputs: {s3_env.url('proj')}\n"
        + f"model: {{tracking_uri: 'sqlite:///{(served / 'mlflow.db').resolve()}'}}\n"
    )
    write_spec(served, spec)
    land(served, "part-0.csv", 800, seed=1)
    result = run(served)
    assert not result.failed, [(r.stage, r.error) for r in result.failed]
    with serving(served) as server, server.client() as client:
        sent = drifted_traffic(client, np.random.default_rng(7), 12)
    # the server flushed its logs on shutdown: to the bucket, nothing on its own disk
    assert not (served / "data" / "monitoring" / "predictions").exists()
    assert _keys(s3_env, "proj/monitoring/predictions/date=")
    assert _keys(s3_env, "proj/monitoring/feedback/date=")

    elsewhere = tmp_path / "monitor"  # another task: the spec alone, no local state
    write_spec(elsewhere, spec)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "monitor", "-p", str(elsewhere), "--json"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard
        check=False,
        env=env,
        cwd=elsewhere,
    )
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    current = report["current"]
    assert current["kind"] == "prediction_log" and current["rows"] == sent
    assert current["labelled_rows_of_champion"] == sent
    assert "x1" in report["data_drift"]["drifted_columns"]
    assert report["performance"]["degraded"]
    assert Layout(elsewhere).predictions == f"s3://{s3_env.bucket}/proj/monitoring/predictions"
    assert SECRET_KEY not in out.stdout + out.stderr
