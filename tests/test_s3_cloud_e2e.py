"""The whole loop in the cloud setting, end to end (issue 13, section 4): every part together.

The shop example lands in a moto bucket week by week (both of a week's files in one upload
step); the bucket notifies an SQS queue; ``driftloop up`` runs the loop woken by that queue
(``ingest.events``) and the server; the state database is on PostgreSQL (``state.url``), the
registry is ``mlflow server`` on PostgreSQL with its artifacts proxied to S3
(``model.tracking_uri``), and the project's outputs are in a bucket of their own
(``outputs: s3://...``). A first model is served; an ordinary week is checked and trains
nothing; a drifted week trains at once, the gate promotes, the server swaps, and a load
client sees no failed request. Then ``up``'s process group is killed with SIGKILL in the
middle of a multi-file upload and started again: every object is taken once, no batch is
done twice, each output is committed once, nothing abandoned is left after the sweep, and
the queue empties. No password or secret of the fixtures shows anywhere.

Everything is waited for by its event (state rows, the registry's alias, /ready's version);
the guards only stop a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.core.layout import Layout, is_complete, scan_output
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.moto import SECRET_KEY, S3Env
from tests.fixtures.postgres import PASSWORD
from tests.s3_notifications import in_queue, to_sqs
from tests.test_s3_sources import everything_written, s3_shop_project

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "driftloop.cli"]
GUARD = 600.0  # seconds: a hang guard for what the test waits for, never a timing assertion
ROWS = 1_500  # orders a week: small, for speed
# The demo's retrain policy (a new model every 3 batches, at once on drift or decay), a
# fast model (one fit: no refit on all rows), quick checks, and a server that follows fast.
LOOP = """
retrain: {every_batches: 3, on_drift: true, on_decay: true}
monitoring: {permutations: 99, schedule_minutes: null}
serving: {workers: 1, poll_seconds: 2, events_poll_seconds: 0.1, log: {flush_seconds: 0.5}}
"""


def _until(what: str, condition: Callable[[], Any], log: Path | None = None) -> Any:
    """Wait for what the loop brings about (polled; the guard only stops a hang)."""
    deadline = time.monotonic() + GUARD
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"still waiting for {what}\n{tail}")
        time.sleep(0.1)


class Cloud:
    """The test's handles: the project, its buckets, queue and state database."""

    def __init__(self, tmp_path: Path, s3: S3Env, server: MlflowServer, postgres_url: str) -> None:
        import sqlalchemy as sa

        self.s3, self.postgres_url = s3, postgres_url
        self.queue = to_sqs(s3)  # S3 -> SQS on the sources' bucket
        self.out_bucket = f"out-{uuid.uuid4().hex[:16]}"  # the outputs' bucket, versioned:
        client = s3.client()  # each commit marker's versions say how often it was put
        client.create_bucket(Bucket=self.out_bucket)
        client.put_bucket_versioning(
            Bucket=self.out_bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        url = sa.make_url(postgres_url)
        state = f"postgresql://postgres@127.0.0.1:{url.port}/{url.database}"  # no password
        # A week's two puts form one batch when the second lands within the batch window
        # of the first's LastModified (whole seconds on S3). On a machine at load 20 the two
        # puts were once more than 3 s apart and the week became two batches: a wide window.
        events = (
            f"  batch_window_seconds: 10\n  events: {{queue: '{self.queue}', "
            "listing_seconds: 3600, wait_seconds: 1, visibility_seconds: 10}\n"
        )
        self.project = s3_shop_project(tmp_path, s3)
        spec_path = self.project / "driftloop.yaml"
        text = spec_path.read_text()
        text = text.replace("name: shop\n", f"name: shop-{uuid.uuid4().hex[:8]}\n", 1)
        text = text.replace("ingest:\n", "ingest:\n" + events, 1)
        text = text.replace(
            "model:\n",
            f"model:\n  tracking_uri: '{server.uri}'\n  refit_on_all: false\n"
            "  params: {max_iter: 50}\n",
            1,
        )
        text += LOOP + f"state: {{url: '{state}'}}\noutputs: s3://{self.out_bucket}/proj\n"
        spec_path.write_text(text)
        self.layout = Layout(self.project)
        self.scratch = tmp_path / "generated"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PGPASSWORD": PASSWORD}

    def db(self) -> StateDB:
        return StateDB(self.layout.state_db, url=self.postgres_url)

    def week(self, week: int, drift: float) -> dict[str, bytes]:
        """The shop's week ``week`` (its customers know the earlier weeks')."""
        from driftloop.examples import raw_file, write_batch

        write_batch(self.scratch, "shop", batch=week, rows=ROWS, drift=drift, seed=3)
        return {t: raw_file(self.scratch, t, week).read_bytes() for t in ("customers", "orders")}

    def key(self, table: str, week: int) -> str:
        return f"raw/{table}/{table}-{week:04d}.csv"

    def upload(self, week: int, files: dict[str, bytes]) -> list[str]:
        """One upload step: the week's files, customers first; their URLs."""
        for table, body in files.items():
            self.s3.put(self.key(table, week), body)
        return [self.s3.url(self.key(table, week)) for table in files]

    def ledger(self) -> list[str]:
        """Every object the ledger took, once per time it was taken."""
        with self.db() as db:
            return sorted(f.path for files in db.files_by_batch().values() for f in files)

    def events(self, *types: str) -> list[dict[str, Any]]:
        with self.db() as db:
            return db.events_after(0, types)

    def checked(self) -> int:
        """Batches checked against the champion (monitor runs that succeeded)."""
        with self.db() as db:
            runs = db.stage_runs(100_000)
        return sum(1 for r in runs if r["stage"] == "monitor" and r["status"] == "succeeded")

    def running(self) -> list[dict[str, Any]]:
        with self.db() as db:
            return db.running()

    def settled(self) -> str | None:
        with self.db() as db:
            return db.fact("settled")

    def out_keys(self) -> list[str]:
        pages = (
            self.s3.client()
            .get_paginator("list_object_versions")
            .paginate(Bucket=self.out_bucket, Prefix="proj/")
        )
        return sorted(v["Key"] for p in pages for v in p.get("Versions", []))


@contextlib.contextmanager
def up(cloud: Cloud, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``driftloop up`` in a process group of its own, stopped by SIGTERM after the block
    unless the block killed it."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "up", "-p", str(cloud.project), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cloud.env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(GUARD) == 0, log.read_text(errors="replace")[-4000:]
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def _ready_version(url: str) -> str | None:
    import httpx

    try:
        answer = httpx.get(f"{url}/ready", timeout=10)
    except httpx.TransportError:
        return None
    if answer.status_code != 200:
        return None
    return str(answer.json()["model"]["version"])


def _stray_attempts(cloud: Cloud) -> dict[str, set[str]]:
    """Outputs with an attempt stored under them other than the one their marker names."""
    client = cloud.s3.client()
    found: dict[str, set[str]] = {}
    for key in set(cloud.out_keys()):
        parts = key.split("/")
        if "_attempts" in parts:
            at = parts.index("_attempts")
            found.setdefault("/".join(parts[:at]), set()).add(parts[at + 1])
    stray = {}
    for output, runs in found.items():
        marker = client.get_object(Bucket=cloud.out_bucket, Key=f"{output}/_SUCCESS")
        if runs != {json.loads(marker["Body"].read())["attempt"]}:
            stray[output] = runs
    return stray


def test_the_shop_in_the_cloud_end_to_end_and_through_a_kill(
    s3_env: S3Env, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    from driftloop.models.registry import CHAMPION, open_registry
    from driftloop.serving.client import Traffic, free_port
    from driftloop.serving.records import request_records

    cloud = Cloud(tmp_path, s3_env, mlflow_server, postgres_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first_log, second_log = tmp_path / "up-1.log", tmp_path / "up-2.log"
    wanted: list[str] = []

    with up(cloud, port, first_log) as loop:
        # -- week 1: the first model, trained on what landed, served ---------------------
        wanted += cloud.upload(1, cloud.week(1, drift=0.0))
        _until("v1 served", lambda: _ready_version(url) == "1", first_log)
        with cloud.db() as db:
            [first_batch] = db.batches()
        rows = scan_output(cloud.layout.processed / first_batch.batch_id).collect().head(300)
        traffic = Traffic(url, request_records(rows, load_spec(cloud.project)), concurrency=2)
        traffic.start()
        try:
            # -- week 2, an ordinary week: checked against v1; the policy waits ----------
            before = _until("the loop settled after week 1", cloud.settled, first_log)
            wanted += cloud.upload(2, cloud.week(2, drift=0.0))
            _until(
                "week 2 checked and the loop settled",
                lambda: (
                    cloud.ledger() == sorted(wanted)
                    and cloud.checked() >= 1
                    and cloud.settled() not in (None, before)
                ),
                first_log,
            )
            assert len(cloud.events("ModelRegistered")) == 1  # no training on week 2
            # -- week 3 has drifted: retrained at once, promoted, swapped under load -----
            wanted += cloud.upload(3, cloud.week(3, drift=1.0))
            promoted = _until(
                "a new champion",
                lambda: [e for e in cloud.events("ModelPromoted") if str(e["version"]) != "1"],
                first_log,
            )
            new = str(promoted[-1]["version"])
            _until(f"v{new} served", lambda: _ready_version(url) == new, first_log)
            _until(
                f"the load client answered by v{new}",
                lambda: any(a.version == new for a in list(traffic.answers)),
            )
        finally:
            traffic.stop()
        registry = open_registry(load_spec(cloud.project), cloud.layout)
        assert registry.alias(CHAMPION) == new
        reasons = [str(e.get("reason")) for e in cloud.events("RetrainRequested")]
        assert len(reasons) == 2, reasons  # the first model, then week 3's
        assert reasons[1].startswith(("drift detected", "performance degraded")), reasons
        assert cloud.events("DriftDetected", "PerformanceDegraded")
        answers = list(traffic.answers)
        failed = [a for a in answers if a.status != 200]
        assert not failed, failed[:5]
        assert {a.version for a in answers} == {"1", new}

        # -- a multi-file upload, kill -9 of up's process group between its objects -------
        wanted += cloud.upload(4, cloud.week(4, drift=1.0))
        _until("week 4 in the ledger", lambda: cloud.ledger() == sorted(wanted), first_log)
        settled_before = cloud.settled()
        _until(  # a stage of week 4 in flight (or, on a fast machine, the pass already over)
            "a stage in flight or the pass over",
            lambda: cloud.running() or cloud.settled() != settled_before,
            first_log,
        )
        os.killpg(loop.pid, signal.SIGKILL)
        loop.wait(GUARD)
    left_running = cloud.running()  # what the dead process left "running"
    wanted += cloud.upload(5, cloud.week(5, drift=1.0))  # ... the rest lands while it is down
    killed_settled = cloud.settled()

    with up(cloud, port, second_log):
        _until(
            "every object taken, the queue empty and the loop settled",
            lambda: (
                cloud.ledger() == sorted(wanted)
                and in_queue(s3_env, cloud.queue) == (0, 0)
                and cloud.settled() not in (None, killed_settled)
            ),
            second_log,
        )
        champion = registry.alias(CHAMPION)  # v{new}, or a later one the restart promoted
        _until(f"v{champion} served again", lambda: _ready_version(url) == champion, second_log)

    # Every object once, each in one batch; every batch processed, committed once.
    assert cloud.ledger() == sorted(wanted) and len(wanted) == 10
    with cloud.db() as db:
        batches = [b.batch_id for b in db.batches()]
        files = db.files_by_batch()
    assert len(batches) == len(set(batches)) == 5
    assert sorted(len(f) for f in files.values()) == [2] * 5
    for batch in batches:
        for output in (cloud.layout.processed, cloud.layout.features):
            assert is_complete(output / batch), f"{output}/{batch}"
    markers = [k for k in cloud.out_keys() if k.endswith("/_SUCCESS")]
    assert markers and len(markers) == len(set(markers)), sorted(markers)  # one version each
    for stage in ("processed", "features"):
        assert {f"proj/{stage}/{b}/_SUCCESS" for b in batches} <= set(markers)
    assert not _stray_attempts(cloud)  # the dead run's attempt swept by the next pass
    with cloud.db() as db:
        assert not db.running()  # what the dead process left running was reconciled ...
        for run in left_running:  # ... and done again, once
            if run["stage"] in ("prep", "features"):
                assert db.succeeded(run["key"]), run
    assert in_queue(s3_env, cloud.queue) == (0, 0)

    # No secret anywhere driftloop writes: outputs, logs, the project, events, S3 objects.
    with cloud.db() as db:
        shown = json.dumps([db.events(limit=100_000), db.stage_runs(100_000)], default=str)
    shown += everything_written(
        cloud.project, first_log.read_text(errors="replace"), second_log.read_text(errors="replace")
    )
    for secret in (PASSWORD, SECRET_KEY):
        assert secret not in shown
    client = s3_env.client()
    for bucket in (s3_env.bucket, cloud.out_bucket, mlflow_server.bucket):
        pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for version in (v for p in pages for v in p.get("Versions", [])):
            body = client.get_object(
                Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"]
            )["Body"].read()
            for secret in (PASSWORD, SECRET_KEY):
                assert secret.encode() not in body, (bucket, version["Key"])
