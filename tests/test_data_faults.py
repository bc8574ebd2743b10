"""Faults in the data that must not stop the loop or lose data (issue 12, section 4): a raw
file whose name is not UTF-8, a Parquet file whose columns are not text, a batch whose raw
file is gone, a raw file changed in place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.core.storage import candidate_files, unmatched_files
from driftloop.ingest.stage import ingest
from driftloop.pipeline import run

from .helpers import write_spec
from .test_ingest import SPEC as CSV_SPEC  # prep and features only

BIN = Path(sys.executable).parent / "driftloop"
BAD_NAME = b"caf\xe9\n\x1b[31mPROMOTED.csv"  # Latin-1, a newline and an escape code
BAD_SHOWN = "data/raw/s/caf\\udce9\\n\\x1b[31mPROMOTED.csv"  # as every output shows it


def land_csv(project: Path, name: str | bytes, text: str = "x,y\n1,2\n3,4\n") -> None:
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    path = os.fsencode(folder) + b"/" + name if isinstance(name, bytes) else folder / name
    with open(path, "wb") as fh:  # noqa: PTH123 - a bytes path, which pathlib cannot hold
        fh.write(text.encode())


def test_a_file_name_that_is_not_utf8_is_reported_and_the_others_are_ingested(
    tmp_path: Path,
) -> None:
    """The listing leaves the file out (the ledger and every output hold text), the report of
    unmatched files names it, escaped, with the fix; the good file beside it is ingested."""
    write_spec(tmp_path, CSV_SPEC)
    land_csv(tmp_path, BAD_NAME)
    land_csv(tmp_path, "good.csv")
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    listed = candidate_files(spec, layout)
    assert [o.key for _, o in listed] == ["data/raw/s/good.csv"]
    [unmatched] = unmatched_files(spec, layout, listed)
    assert os.fsencode(unmatched["path"]) == b"data/raw/s/" + BAD_NAME
    assert "its name is not valid UTF-8, so it is not read; rename it" in unmatched["problem"]
    with StateDB(layout.state_db) as db:
        found = ingest(spec, layout, db)
    assert [f.path for f in found.new_files] == ["data/raw/s/good.csv"]


def test_run_goes_on_past_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """``driftloop run`` used to end in a traceback (exit 1) on such a name, on every run."""
    write_spec(tmp_path, CSV_SPEC)
    land_csv(tmp_path, BAD_NAME)
    land_csv(tmp_path, "good.csv")
    for _ in range(2):  # the second run is settled and still says so
        out = subprocess.run(
            [str(BIN), "run", "-p", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert f"unmatched: {BAD_SHOWN} in source s's folder: its name is not valid UTF-8" in (
            out.stdout
        )
        assert "\nPROMOTED" not in out.stdout and "\x1b" not in out.stdout
    status = subprocess.run(
        [str(BIN), "status", "-p", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert status.returncode == 0 and BAD_SHOWN in status.stdout
    assert len(list((tmp_path / "data" / "features").glob("*/_SUCCESS"))) == 1


def test_watch_ingests_a_good_file_landing_after_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    """``watch`` used to fail every pass on such a name, so a good file landing after it was
    never ingested."""
    from driftloop.orchestration.loop import RunResult
    from driftloop.orchestration.watch import Watcher

    write_spec(tmp_path, CSV_SPEC)
    land_csv(tmp_path, BAD_NAME)
    ingested = threading.Event()
    errors: list[str] = []

    def on_pass(result: RunResult) -> None:
        if result.ingest.batch is not None:
            ingested.set()

    watcher = Watcher(tmp_path, interval=0.2, on_pass=on_pass)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        land_csv(tmp_path, "good.csv")
        watcher.wake()
        assert ingested.wait(120), f"the good file was not ingested: {watcher.state.last_error}"
        errors.extend(filter(None, [watcher.state.last_error]))
        assert [os.fsencode(p) for p in watcher.state.unmatched] == [b"data/raw/s/" + BAD_NAME]
    finally:
        watcher.stop.set()
        watcher.wake()
        thread.join(30)
    assert errors == []


PARQUET_SPEC = """
name: tiny
task: regression
target: y
sources:
  - name: s
    path: data/raw/s/*.parquet
    format: parquet
contract:
  columns:
    x: {dtype: float, min: 0}
    y: {dtype: float}
ingest: {settle_seconds: 0}
model: {enabled: false}  # prep and features only here
"""


def _manifest(folder: Path) -> dict[str, object]:
    [batch] = [p for p in folder.iterdir() if not p.name.startswith(".")]
    manifest: dict[str, object] = json.loads((batch / "manifest.json").read_text())
    return manifest


def test_a_parquet_file_whose_columns_are_not_text_is_quarantined_alone(tmp_path: Path) -> None:
    """A list-typed column, or a binary column holding bytes that are not UTF-8, used to fail
    the whole batch as an unexpected error on every run; now that file is quarantined with the
    column and the fix, and the batch's other files go on."""
    write_spec(tmp_path, PARQUET_SPEC)
    raw = tmp_path / "data" / "raw" / "s"
    raw.mkdir(parents=True)
    pl.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]}).write_parquet(raw / "good.parquet")
    pl.DataFrame({"x": [5.0], "y": [6.0], "tags": [["a", "b"]]}).write_parquet(
        raw / "lists.parquet"
    )
    pl.DataFrame(
        {"x": [7.0, 8.0, 9.0], "y": [1.0, 2.0, 3.0], "note": [b"ok", b"\xff\xfe", None]}
    ).write_parquet(raw / "binary.parquet")

    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    assert [(r.stage, r.outcome) for r in result.reports] == [("prep", "ran"), ("features", "ran")]
    manifest = _manifest(tmp_path / "data" / "processed")
    assert manifest["rows_ok"] == 2
    reasons = {f["path"]: f["error"] for f in manifest["files_quarantined"]}  # type: ignore[attr-defined]
    assert sorted(reasons) == ["data/raw/s/binary.parquet", "data/raw/s/lists.parquet"]
    lists, binary = reasons["data/raw/s/lists.parquet"], reasons["data/raw/s/binary.parquet"]
    assert lists.startswith("column 'tags' is nested (List(String)); expected one scalar")
    assert "expected one scalar value per field" in lists and "Flatten or drop" in lists
    assert binary.startswith("column 'note' is binary: record 2 is not valid UTF-8")
    assert "Write the column as a UTF-8 string column" in binary
    # The same run again is a cache hit, not a failure every time.
    assert not run(tmp_path).reports


def _rows(n: int, start: int = 0) -> str:
    return "x,y\n" + "".join(f"{i + 1},{2 * i}\n" for i in range(start, start + n))


def _committed(project: Path, folder: str, batch: str) -> int | None:
    """The rows of a batch's committed output, None when there is none."""
    out = project / "data" / folder / batch
    if not (out / "_SUCCESS").is_file():
        return None
    return pl.read_parquet(out / "data.parquet").height


def test_a_batch_whose_raw_file_is_gone_keeps_its_outputs_and_is_reported_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A contract change re-preps every batch; one whose raw file is gone used to fail and
    lose its processed rows and features (the next model trained on half the rows). Its
    outputs are kept, the batch is reported stale with what to do, and the others go on."""
    from driftloop.cli import print_status
    from driftloop.orchestration.failures import dismiss, retry
    from driftloop.orchestration.status import project_status
    from driftloop.train.stage import train_plan, training_frame

    write_spec(tmp_path, CSV_SPEC)
    land_csv(tmp_path, "a.csv", _rows(400))
    first = run(tmp_path).ingest.batch
    land_csv(tmp_path, "b.csv", _rows(400, 400))
    second = run(tmp_path).ingest.batch
    assert first is not None and second is not None
    a, b = first.batch_id, second.batch_id
    kept = (tmp_path / "data/raw/s/a.csv").read_bytes()
    (tmp_path / "data/raw/s/a.csv").unlink()
    write_spec(tmp_path, CSV_SPEC.replace("min: 0", "min: 0, max: 1000000"))

    result = run(tmp_path)
    by_batch = {(r.stage, r.batch_id): r for r in result.reports}
    stale = by_batch[("prep", a)]
    assert stale.outcome == "failed"
    assert (stale.error or "").startswith(
        f"batch {a} is stale: it cannot be prepared again under the current driftloop.yaml "
        "because its raw file data/raw/s/a.csv cannot be read as it was ingested: the file is "
        "gone since it was ingested"
    )
    assert "nothing was deleted" in (stale.error or "")
    assert f"'driftloop batches retry {a}'" in (stale.error or "")
    assert f"'driftloop batches dismiss {a} --reason TEXT'" in (stale.error or "")
    assert by_batch[("prep", b)].outcome == "ran"
    assert [r.batch_id for r in result.unresolved] == [a]  # run exits 1 until resolved
    # Nothing of the stale batch was deleted.
    assert _committed(tmp_path, "processed", a) == 400
    assert _committed(tmp_path, "features", a) == 400
    # ... and every later run says so again.
    again = run(tmp_path)
    assert [(r.batch_id, r.outcome) for r in again.unresolved] == [(a, "failed-earlier")]
    assert "is stale" in (again.unresolved[0].error or "")
    [shown_stale] = project_status(tmp_path)["stale_batches"]
    assert shown_stale == {"batch_id": a, "dismissed": False, "reason": stale.error}
    capsys.readouterr()
    print_status(project_status(tmp_path))
    assert f"stale: batch {a} is stale: it cannot be prepared again" in capsys.readouterr().out

    # Accepted as it is: training reads both batches' rows, 800, not 400.
    dismiss(tmp_path, a, reason="the raw file was archived", actor="test")
    assert not run(tmp_path).unresolved
    assert [s["dismissed"] for s in project_status(tmp_path)["stale_batches"]] == [True]
    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        plan = train_plan(load_spec(tmp_path), layout, db)
    assert plan is not None and training_frame(layout, plan.lineage).height == 800

    # The file back, the batch retried: prepared again under the current contract.
    (tmp_path / "data/raw/s/a.csv").write_bytes(kept)
    retry(tmp_path, a, actor="test")
    rebuilt = run(tmp_path)
    assert not rebuilt.unresolved
    assert [(r.stage, r.batch_id, r.outcome) for r in rebuilt.reports][:1] == [("prep", a, "ran")]
    assert _committed(tmp_path, "processed", a) == 400
    assert project_status(tmp_path)["stale_batches"] == []


# ingest.recheck_seconds: 0, so that every pass checks every raw file's identity (the
# default checks them every 300 s: tests/test_settled.py shows a change noticed then)
EVERY_PASS = CSV_SPEC.replace("{settle_seconds: 0}", "{settle_seconds: 0, recheck_seconds: 0}")


def test_a_file_changed_in_place_is_refused_not_counted_twice(tmp_path: Path) -> None:
    """A file rewritten in place (its rows plus new ones) used to be ingested again as a file
    of its own: its first rows were in two batches and trained on twice. The rule: a raw
    file is never modified; the new content is refused on every pass, with what to do,
    until the original is back; new rows land under a new name."""
    from driftloop.orchestration.status import project_status

    write_spec(tmp_path, EVERY_PASS)  # every file's identity checked on every pass
    land_csv(tmp_path, "a.csv", _rows(3))
    first = run(tmp_path).ingest.batch
    assert first is not None
    original = (tmp_path / "data/raw/s/a.csv").read_bytes()
    land_csv(tmp_path, "a.csv", _rows(5))  # the same three rows and two more

    for _ in range(2):  # refused on every run, not only the first
        result = run(tmp_path)
        assert result.ingest.batch is None and not result.reports
        [changed] = result.ingest.changed
        assert changed.startswith(
            f"data/raw/s/a.csv: changed in place since it was ingested in batch "
            f"{first.batch_id} (sha256 "
        )
        assert "so it is not ingested again: its earlier rows would be counted twice" in changed
        assert "land new rows under a new file name" in changed
    with StateDB(Layout(tmp_path).state_db) as db:
        assert len(db.batches()) == 1
        assert [f.path for f in db.batch_files(first.batch_id)] == ["data/raw/s/a.csv"]
    pending = project_status(tmp_path)["pending"]
    assert pending["files_changed_in_place"] == ["data/raw/s/a.csv"]
    assert pending["files_not_ingested"] == []
    assert _committed(tmp_path, "features", first.batch_id) == 3  # trained on once

    # The new rows under a new name are a batch of their own; the original back: all clear.
    land_csv(tmp_path, "a-more.csv", "x,y\n" + _rows(5).split("\n", 4)[4])
    (tmp_path / "data/raw/s/a.csv").write_bytes(original)
    result = run(tmp_path)
    assert result.ingest.changed == [] and result.ingest.batch is not None
    assert [f.path for f in result.ingest.new_files] == ["data/raw/s/a-more.csv"]
    assert project_status(tmp_path)["pending"]["files_changed_in_place"] == []
    rows = sum(
        pl.read_parquet(p).height for p in (tmp_path / "data/features").glob("*/data.parquet")
    )
    assert rows == 5
    assert not run(tmp_path).reports  # settled


def test_run_prints_a_file_changed_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from driftloop.cli import print_run

    write_spec(tmp_path, EVERY_PASS)  # every file's identity checked on every pass
    land_csv(tmp_path, "a.csv", _rows(3))
    run(tmp_path)
    land_csv(tmp_path, "a.csv", _rows(4))
    print_run(run(tmp_path))
    printed = capsys.readouterr().out
    assert "not ingested data/raw/s/a.csv: changed in place since it was ingested" in printed
    assert "nothing to do" not in printed


def test_watch_reports_a_file_changed_in_place_once_and_goes_on(tmp_path: Path) -> None:
    from driftloop.orchestration.loop import RunResult
    from driftloop.orchestration.watch import Watcher

    write_spec(tmp_path, EVERY_PASS)  # every file's identity checked on every pass
    land_csv(tmp_path, "a.csv", _rows(3))
    run(tmp_path)
    land_csv(tmp_path, "a.csv", _rows(4))  # changed in place before the watch starts
    told: list[tuple[bool, list[str]]] = []
    ingested = threading.Event()

    def on_pass(result: RunResult) -> None:
        if result.ingest.changed:
            told.append((result.progressed, result.ingest.changed))
        if result.ingest.batch is not None:
            ingested.set()

    watcher = Watcher(tmp_path, interval=0.2, on_pass=on_pass)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        land_csv(tmp_path, "b.csv", _rows(2, 10))  # a good file after it is taken
        watcher.wake()
        assert ingested.wait(120), f"b.csv was not ingested: {watcher.state.last_error}"
        passes = watcher.state.passes
        while watcher.state.passes < passes + 2 and thread.is_alive():
            watcher.wake()
            ingested.wait(0.1)
    finally:
        watcher.stop.set()
        watcher.wake()
        thread.join(30)
    assert told and all(
        len(c) == 1 and c[0].startswith("data/raw/s/a.csv: changed") for _, c in told
    )
    assert sum(not progressed for progressed, _ in told) <= 1  # told once, not every pass
    with StateDB(Layout(tmp_path).state_db) as db:
        assert sorted(f.path for f in db.files_until(10)) == [
            "data/raw/s/a.csv",
            "data/raw/s/b.csv",
        ]
