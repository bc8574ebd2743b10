"""Two ``driftloop work`` processes on one project: one PostgreSQL state database (a real
server, started by the fixture), one raw folder. Each unit of work is claimed, so every file
is taken exactly once and every batch's stages run exactly once, whoever runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

import driftloop
from driftloop.core.layout import Layout, is_complete, read_manifest
from driftloop.core.state import StateDB

from .helpers import write_spec
from .test_state_store import TINY

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "driftloop.cli"]
HANG_GUARD = 600  # seconds: a stuck worker fails the test, a slow one does not


def land(project: Path, index: int) -> None:
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{index + i},{i}\n" for i in range(50))
    (folder / f"part-{index:03d}.csv").write_text("x,y\n" + rows + "-1,0\n")  # one bad row


def test_two_workers_share_the_work_and_repeat_none(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sa.make_url(postgres_url)
    password = str(url.password)
    monkeypatch.setenv("PGPASSWORD", password)  # libpq's, as the spec asks
    spec_url = f"postgresql://postgres@127.0.0.1:{url.port}/{url.database}"
    write_spec(tmp_path, TINY.replace("URL", spec_url))
    # History: eight batches ingested (one file each), none prepared yet ...
    for index in range(8):
        land(tmp_path, index)
        assert driftloop.run_stage(tmp_path, "ingest").outcome == "ran"
    # ... and two files nobody has taken: both workers race for them.
    land(tmp_path, 100)
    land(tmp_path, 101)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PGPASSWORD": password}
    workers = [
        subprocess.Popen(
            [*CLI, "work", "-p", str(tmp_path), "--until-idle", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=HANG_GUARD)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all(password not in out for out in outputs)
    # Whatever one worker left running when the other went idle is finished by a pass now.
    driftloop.run(tmp_path)

    layout = Layout(tmp_path)
    with StateDB(layout.state_db, url=postgres_url) as db:
        batches = db.batches()
        files = [f for b in batches for f in db.batch_files(b.batch_id)]
        events = db.events(limit=10_000)
    raw = sorted(p.name for p in (tmp_path / "data" / "raw" / "s").iterdir())
    assert sorted(Path(f.path).name for f in files) == raw  # every file, exactly once
    assert len(batches) == 9  # the two racing files formed one batch, taken by one worker
    started = Counter((e["stage"], e["batch_id"]) for e in events if e["type"] == "StageStarted")
    assert set(started.values()) == {1}, started  # no stage of any batch ran twice
    assert {stage for stage, _ in started} == {"prep", "features"}
    rows = 0
    for batch in batches:
        assert is_complete(layout.processed / batch.batch_id)
        assert is_complete(layout.features / batch.batch_id)
        m = read_manifest(layout.processed / batch.batch_id)
        assert m["rows_quarantined"] == len(m["inputs"])  # each file's one bad row
        rows += m["rows_in"]
    assert rows == 51 * len(raw)
    assert not (tmp_path / ".driftloop" / "state.db").exists()  # all of it on the server
