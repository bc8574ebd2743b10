"""Exactly-once ingest, re-uploads, files still being written, idempotent stages."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from driftloop.core.layout import Layout
from driftloop.core.rawstore import LocalRawStore
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.ingest.stage import ingest
from driftloop.pipeline import run

from .helpers import features_of, write_spec

SPEC = """
name: tiny
task: regression
target: y
sources:
  - name: s
    path: data/raw/s/*.csv
contract:
  columns:
    x: {dtype: float, min: 0}
    y: {dtype: float}
features:
  logs: [x]
ingest: {settle_seconds: 0}
model: {enabled: false}  # prep and features only here
"""


def land(project: Path, name: str, rows: list[tuple[float, float]]) -> Path:
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in rows))
    return path


def test_each_file_is_taken_once_and_reuploads_are_recognised(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    first = land(tmp_path, "a.csv", [(1, 2), (3, 4)])
    before = first.read_bytes(), first.stat().st_mtime_ns
    r1 = run(tmp_path)
    assert r1.ingest.batch is not None and len(r1.ingest.new_files) == 1
    # The same content under another name is not taken again.
    (tmp_path / "data" / "raw" / "s" / "a-copy.csv").write_bytes(first.read_bytes())
    r2 = run(tmp_path)
    assert r2.ingest.batch is None
    assert [(r.path, r.same_as) for r in r2.ingest.reuploads] == [
        ("data/raw/s/a-copy.csv", "data/raw/s/a.csv")
    ]
    assert not r2.did_work
    # Raw files are never modified, moved or deleted.
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert sorted(p.name for p in first.parent.iterdir()) == ["a-copy.csv", "a.csv"]
    with StateDB(Layout(tmp_path).state_db) as db:
        assert len(db.batches()) == 1
        events = [e["type"] for e in db.events()]
    assert events.count("DataArrived") == 1


def test_new_file_makes_a_new_batch_and_only_it_is_processed(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2)])
    run(tmp_path)
    land(tmp_path, "b.csv", [(5, 6), (7, 8)])
    r = run(tmp_path)
    ran = [(rep.stage, rep.outcome) for rep in r.reports]
    assert ran == [("prep", "ran"), ("features", "ran")]  # the first batch is up to date
    batches = sorted(p for p in (tmp_path / "data" / "processed").iterdir())
    assert len(batches) == 2
    manifest = json.loads((batches[1] / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == ["data/raw/s/b.csv"]
    content = (tmp_path / "data/raw/s/b.csv").read_bytes()
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(content).hexdigest()


def test_second_run_does_no_work_and_spec_change_reruns_only_dependents(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2), (3, 4)])
    run(tmp_path)
    again = run(tmp_path)
    assert again.reports == []  # every output is current: the plan is empty
    assert not again.did_work
    # A features-only change re-runs features, not prep.
    write_spec(tmp_path, SPEC.replace("logs: [x]", "logs: [x, y]"))
    r = run(tmp_path)
    assert [(x.stage, x.outcome) for x in r.reports] == [("features", "ran")]
    feats = features_of(tmp_path)
    assert "log1p_y" in feats.columns
    # A contract change re-runs prep and therefore features.
    write_spec(tmp_path, SPEC.replace("logs: [x]", "logs: [x, y]").replace("min: 0", "min: 2"))
    r = run(tmp_path)
    assert [(x.stage, x.outcome) for x in r.reports] == [("prep", "ran"), ("features", "ran")]
    assert r.reports[0].manifest["rows_quarantined"] == 1


def test_file_still_being_written_is_left_for_later(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.replace("settle_seconds: 0", "settle_seconds: 30"))
    path = land(tmp_path, "a.csv", [(1, 2)])
    land(tmp_path, ".b.csv.tmp", [(1, 2)])  # temporary names are never read
    spec = load_spec(tmp_path)
    layout = Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        result = ingest(spec, layout, db, wait=False)
        assert result.batch is None
        assert result.still_writing == ["data/raw/s/a.csv"]
        # Once it has been quiet for the settle time, it is taken.
        old = time.time() - 60
        os.utime(path, (old, old))
        result = ingest(spec, layout, db, wait=False)
        assert result.batch is not None
        assert [f.path for f in result.new_files] == ["data/raw/s/a.csv"]


def test_a_file_the_os_saw_finished_needs_no_settle_time(tmp_path: Path) -> None:
    """``driftloop watch`` learns from the OS when a file was closed after writing or renamed
    into place; such a file is taken at once, unless it changed since."""
    spec_text = SPEC.replace("settle_seconds: 0", "settle_seconds: 30, batch_window_seconds: 0")
    write_spec(tmp_path, spec_text)
    a = land(tmp_path, "a.csv", [(1, 2)])
    b = land(tmp_path, "b.csv", [(3, 4)])
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    seen = {layout.relative(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (a, b)}
    with b.open("a") as fh:  # b was written to again after the OS said it was done
        fh.write("5,6\n")
    with StateDB(layout.state_db) as db:
        result = ingest(spec, layout, db, wait=False, complete=seen)
    assert [f.path for f in result.new_files] == ["data/raw/s/a.csv"]
    assert result.still_writing == ["data/raw/s/b.csv"]


def test_file_growing_during_the_settle_wait_is_not_taken(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.replace("settle_seconds: 0", "settle_seconds: 5"))
    path = land(tmp_path, "a.csv", [(1, 2)])
    spec = load_spec(tmp_path)
    layout = Layout(tmp_path)

    def writer_keeps_writing(_: float) -> None:
        with path.open("a") as fh:
            fh.write("9,9\n")

    with StateDB(layout.state_db) as db:
        result = ingest(spec, layout, db, wait=True, sleep=writer_keeps_writing)
    assert result.batch is None
    assert result.still_writing == ["data/raw/s/a.csv"]


def test_outputs_are_atomic_and_unsealed_outputs_are_ignored(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2)])
    run(tmp_path)
    [out] = list((tmp_path / "data/processed").iterdir())
    assert (out / "_SUCCESS").is_file()
    # A crash leftover (temporary folder) is swept, and a missing marker forces a re-run.
    (tmp_path / "data/processed/.tmp-x-123").mkdir()
    (out / "_SUCCESS").unlink()
    r = run(tmp_path)
    assert r.reports[0].outcome == "ran"
    assert not (tmp_path / "data/processed/.tmp-x-123").exists()
    assert (out / "_SUCCESS").is_file()


def test_unexpected_errors_are_reported_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftloop.prep import stage as stages

    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2)])

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(stages, "_run_prep", broken)
    first = run(tmp_path)
    assert first.failed and "unexpected OSError: disk full" in (first.failed[0].error or "")
    monkeypatch.undo()
    second = run(tmp_path)  # not "failed-earlier": an unexpected error is tried again
    assert [(r.stage, r.outcome) for r in second.reports] == [("prep", "ran"), ("features", "ran")]


def test_a_changed_spec_leaves_no_stale_output(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.replace("min: 0", "min: 2"))
    land(tmp_path, "a.csv", [(1, 2), (3, 4), (5, 6)])
    run(tmp_path)
    [batch] = [p.name for p in (tmp_path / "data/processed").iterdir()]
    quarantine = tmp_path / "data/quarantine" / batch
    assert (quarantine / "_SUCCESS").is_file()
    # Looser contract: nothing is bad any more, so the old quarantine output goes.
    write_spec(tmp_path, SPEC)
    assert not run(tmp_path).failed
    assert not quarantine.exists()
    # A contract most rows break: the batch fails; processed and features are withdrawn,
    # so no reader sees rows that the current contract rejects.
    write_spec(tmp_path, SPEC.replace("min: 0", "min: 4"))
    failed = run(tmp_path)
    assert [r.outcome for r in failed.reports] == ["failed"]
    assert not (tmp_path / "data/processed" / batch).exists()
    assert not (tmp_path / "data/features" / batch).exists()
    assert (quarantine / "_SUCCESS").is_file()
    # Back to the first contract: everything is rebuilt.
    write_spec(tmp_path, SPEC)
    assert [r.outcome for r in run(tmp_path).reports] == ["ran", "ran"]


def test_a_renamed_source_keeps_its_files(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2)])
    run(tmp_path)
    write_spec(tmp_path, SPEC.replace("name: s\n", "name: events\n"))
    result = run(tmp_path)  # the spec changed (sources), so prep runs again with the new name
    assert not result.failed, [r.error for r in result.failed]
    assert result.reports[0].manifest["inputs"][0]["source"] == "events"
    # A file no source matches any more is quarantined with the reason, not lost silently.
    other = SPEC.replace("data/raw/s/*.csv", "data/raw/other/*.csv").replace(
        "name: s\n", "name: o\n"
    )
    write_spec(tmp_path, other)
    result = run(tmp_path)
    assert result.reports[0].outcome == "failed"
    assert "no source in driftloop.yaml matches this file any more" in str(result.reports[0].error)


@pytest.mark.parametrize("every_pass", [True, False])
def test_a_raw_file_changed_in_place_is_not_read_as_the_old_batch(
    tmp_path: Path, every_pass: bool
) -> None:
    """Whenever the recheck of the raw files' identities comes (on every pass with
    ``recheck_seconds: 0``, else every 300 s), the changed content is never read as the
    batch's: prep hashes what it reads."""
    spec = SPEC.replace("{settle_seconds: 0}", "{settle_seconds: 0, recheck_seconds: 0}")
    spec = spec if every_pass else SPEC
    write_spec(tmp_path, spec)
    path = land(tmp_path, "a.csv", [(1, 2), (3, 4)])
    run(tmp_path)
    path.write_text("x,y\n5,6\n7,8\n9,10\n")  # overwritten in place: refused at ingest
    write_spec(tmp_path, spec.replace("logs: [x]", "logs: [y]").replace("min: 0", "min: 0.5"))
    result = run(tmp_path)
    # The old batch cannot be rebuilt from content that is gone: it keeps its outputs and
    # is reported stale; the new content is not ingested (tests/test_data_faults.py).
    [first] = result.reports
    assert first.outcome == "failed"
    assert "is stale" in str(first.error)
    assert "the file changed since it was ingested" in str(first.error)
    # ingest reports it on a recheck (this pass's when every pass is one; else later)
    assert result.ingest.batch is None and len(result.ingest.changed) == int(every_pass)


def test_files_landing_together_form_one_batch_in_the_loop(tmp_path: Path) -> None:
    """Without waiting (the loop), fresh files wait for the batch window, so a delivery of
    several files (orders and their customers) becomes one batch."""
    write_spec(
        tmp_path, SPEC.replace("settle_seconds: 0", "settle_seconds: 0, batch_window_seconds: 60")
    )
    a = land(tmp_path, "a.csv", [(1, 2)])
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        first = ingest(spec, layout, db, wait=False)
        assert first.batch is None and first.still_writing == ["data/raw/s/a.csv"]
        b = land(tmp_path, "b.csv", [(3, 4)])
        old = time.time() - 120
        for path in (a, b):
            os.utime(path, (old, old))  # a minute later, nothing new came
        both = ingest(spec, layout, db, wait=False)
    assert both.batch is not None
    assert sorted(f.path for f in both.new_files) == ["data/raw/s/a.csv", "data/raw/s/b.csv"]


def test_an_unreadable_file_is_reported_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "secret.csv", [(1, 2)])
    land(tmp_path, "fine.csv", [(3, 4)])
    real = LocalRawStore.open

    def open_or_refuse(store: LocalRawStore, key: str) -> BinaryIO:
        if key.endswith("secret.csv"):  # a file another user owns, mode 600
            raise PermissionError(13, "Permission denied", key)
        return real(store, key)

    monkeypatch.setattr(LocalRawStore, "open", open_or_refuse)
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    with StateDB(layout.state_db) as db:
        result = ingest(spec, layout, db)
    assert [f.path for f in result.new_files] == ["data/raw/s/fine.csv"]
    assert result.unreadable == ["data/raw/s/secret.csv: Permission denied"]


def test_a_link_that_leaves_the_project_is_refused_unless_the_spec_allows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symbolic link in a raw folder to a file outside the project (and outside the
    source's folder) is never opened: it is reported as refused, without its content, and
    the other files go on; a link within the project is followed; the spec may allow links
    that leave it."""
    from driftloop.cli import print_run

    project = tmp_path / "project"
    write_spec(project, SPEC)
    land(project, "fine.csv", [(1, 2)])
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:TOPSECRET:/root:/bin/sh\n")
    raw = project / "data" / "raw" / "s"
    (raw / "link.csv").symlink_to(secret)
    kept = project / "kept" / "more.csv"
    kept.parent.mkdir()
    kept.write_text("x,y\n5,6\n")
    (raw / "inside.csv").symlink_to(kept)

    result = run(project)
    assert sorted(f.path for f in result.ingest.new_files) == [
        "data/raw/s/fine.csv",
        "data/raw/s/inside.csv",
    ]
    [refused] = result.ingest.refused
    assert refused.startswith(
        "data/raw/s/link.csv: a symbolic link to a file outside the project folder"
    )
    assert "ingest.follow_links_outside: true" in refused
    print_run(result)
    printed = capsys.readouterr().out
    assert "refused data/raw/s/link.csv: a symbolic link" in printed
    assert "TOPSECRET" not in printed and str(secret) not in printed
    for path in project.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"TOPSECRET" not in path.read_bytes(), path

    allowed = SPEC.replace("{settle_seconds: 0}", "{settle_seconds: 0, follow_links_outside: true}")
    write_spec(project, allowed)
    again = run(project)
    assert [f.path for f in again.ingest.new_files] == ["data/raw/s/link.csv"]
    assert again.ingest.refused == []
