"""Bad input: each file of the corpus is quarantined with a readable reason (whole, or the
rows that are bad), the odd but valid ones are accepted, and the run goes on with the rest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from driftloop.core.layout import DATA_FILE
from driftloop.orchestration.runner import StageReport
from driftloop.pipeline import RunResult, run

from .corpus import (
    COLUMNS,
    GOOD_FILE,
    QUOTED_NOTE,
    SOURCE,
    Expectation,
    bad_corpus,
    write_bad_corpus,
    write_corpus_spec,
)

# the tests share the module's run of the whole corpus: one worker runs it
pytestmark = pytest.mark.xdist_group("bad_input")

CORPUS = bad_corpus()
PREFIX = f"data/raw/{SOURCE}/"
CONTRACT_REASON = re.compile(
    r"^column '(?P<column>[^']+)' breaks (?P<rule>[^:]+): got (null|'.*')$"
)
LINE_REASON = re.compile(r"^line \d+: (row has \d+ field\(s\), expected \d+|a quote)")
RAW_LINE = "__raw_line"


@dataclass
class Outcome:
    """One pass over a project, with what prep wrote."""

    result: RunResult
    prep: StageReport
    processed: pl.DataFrame | None
    quarantined: pl.DataFrame | None
    duplicates: pl.DataFrame | None
    quarantine_manifest: dict[str, Any] | None


def _run(project: Path) -> Outcome:
    result = run(project)
    (prep,) = [r for r in result.reports if r.stage == "prep"]
    data = project / "data"
    processed = data / "processed" / prep.batch_id / DATA_FILE
    quarantine = data / "quarantine" / prep.batch_id
    return Outcome(
        result,
        prep,
        pl.read_parquet(processed) if processed.is_file() else None,
        pl.read_parquet(quarantine / "rows.parquet") if quarantine.is_dir() else None,
        pl.read_parquet(quarantine / "duplicates.parquet") if quarantine.is_dir() else None,
        json.loads((quarantine / "manifest.json").read_text()) if quarantine.is_dir() else None,
    )


def _of(frame: pl.DataFrame | None, name: str) -> pl.DataFrame:
    if frame is None:
        return pl.DataFrame({"__file": [], "__row": [], "__reason": []})
    return frame.filter(pl.col("__file") == PREFIX + name)


def _cases(outcome: str) -> dict[str, Expectation]:
    return {n: e for n, (_, e) in CORPUS.items() if e.outcome == outcome}


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The whole corpus and the good file, landed together as one batch."""
    project = tmp_path_factory.mktemp("corpus")
    write_bad_corpus(write_corpus_spec(project))
    return _run(project)


def test_the_corpus_is_big_enough() -> None:
    bad = [e for n, (_, e) in CORPUS.items() if n != GOOD_FILE]
    assert len(bad) >= 18
    assert len({e.outcome for e in bad}) == 3


def test_the_run_goes_on_past_bad_files(everything: Outcome) -> None:
    assert everything.result.ingest.batch is not None
    assert len(everything.result.ingest.new_files) == len(CORPUS)
    assert everything.prep.outcome == "ran", everything.prep.error
    assert [r.outcome for r in everything.result.reports] == ["ran", "ran"]


def test_unreadable_files_are_quarantined_whole_with_their_reason(everything: Outcome) -> None:
    listed = {f["path"]: f for f in everything.prep.manifest["files_quarantined"]}
    expected = _cases("file")
    assert sorted(listed) == sorted(PREFIX + n for n in expected)
    for name, expectation in expected.items():
        entry = listed[PREFIX + name]
        assert expectation.reason in entry["error"], (name, entry["error"])
        assert entry["sha256"] == hashlib.sha256(CORPUS[name][0]).hexdigest()
    assert everything.quarantine_manifest is not None
    assert everything.quarantine_manifest["files_quarantined"] == list(listed.values())


def test_bad_rows_are_quarantined_with_their_file_row_and_reason(everything: Outcome) -> None:
    quarantined = everything.quarantined
    assert quarantined is not None
    expected = _cases("rows")
    assert sorted(set(quarantined["__file"])) == sorted(PREFIX + n for n in expected)
    for name, expectation in expected.items():
        mine = _of(quarantined, name)
        assert mine.height == len(expectation.bad_rows), (name, mine.to_dicts())
        for bad in expectation.bad_rows:
            if bad.line is None:  # a contract problem: the row is its record number
                hit = mine.filter(pl.col("__row") == bad.row)
                assert hit.height == 1, (name, bad)
                assert bad.reason in hit["__reason"][0], (name, hit["__reason"][0])
                assert hit[RAW_LINE][0] is None
            else:  # set aside by the reader: the reason names the line, the raw text is kept
                hit = mine.filter(pl.col("__reason").str.starts_with(f"line {bad.line}: "))
                assert hit.height == 1, (name, bad, mine["__reason"].to_list())
                assert bad.reason in hit["__reason"][0], (name, hit["__reason"][0])
                assert hit[RAW_LINE][0]


def test_rows_the_reader_sets_aside_carry_their_record_number(everything: Outcome) -> None:
    for name, expectation in _cases("rows").items():
        mine = _of(everything.quarantined, name)
        for bad in expectation.bad_rows:
            if bad.line is not None:
                hit = mine.filter(pl.col("__reason").str.starts_with(f"line {bad.line}: "))
                assert hit["__row"].to_list() == [bad.row], name


def test_good_rows_reach_processed(everything: Outcome) -> None:
    processed = everything.processed
    assert processed is not None
    for name, (_, expectation) in CORPUS.items():
        mine = _of(processed, name)
        assert mine.height == expectation.good_rows, name
        bad = {b.row for b in expectation.bad_rows}
        assert not bad & set(mine["__row"]), name
    good = CORPUS[GOOD_FILE][1].good_rows
    assert _of(processed, GOOD_FILE)["__row"].to_list() == list(range(1, good + 1))


def test_odd_but_valid_files_are_read_right(everything: Outcome) -> None:
    processed = everything.processed
    assert processed is not None
    assert not [c for c in processed.columns if "\ufeff" in c]
    assert set(COLUMNS) <= set(processed.columns)
    bom = _of(processed, "utf8_bom.csv")
    assert bom["id"].null_count() == 0
    crlf = _of(processed, "crlf.csv")
    assert not crlf.select(pl.col("note", "status").str.contains("\r").any()).row(0)[0]
    assert crlf["label"].null_count() == 0
    quoted = _of(processed, "quoted_fields.csv").sort("__row")
    assert quoted["__row"].to_list() == [1, 2, 3, 4]  # a record over two lines counts once
    assert quoted["note"][1] == QUOTED_NOTE


def test_nothing_is_lost(everything: Outcome) -> None:
    manifest = everything.prep.manifest
    inputs = {i["path"]: i["rows"] for i in manifest["inputs"]}
    unreadable = {f["path"] for f in manifest["files_quarantined"]}
    assert not inputs.keys() & unreadable
    assert sorted(inputs.keys() | unreadable) == sorted(PREFIX + n for n in CORPUS)
    for path, rows_in in inputs.items():
        name = path.removeprefix(PREFIX)
        ok = _of(everything.processed, name).height
        bad = _of(everything.quarantined, name).height
        dup = _of(everything.duplicates, name).height
        assert rows_in == ok + bad + dup, name
    assert manifest["rows_in"] == sum(inputs.values())
    assert manifest["rows_in"] == (
        manifest["rows_ok"] + manifest["rows_quarantined"] + manifest["rows_duplicate"]
    )
    assert manifest["rows_duplicate"] == 0  # the corpus gives every row its own id


def test_every_reason_is_readable(everything: Outcome) -> None:
    for entry in everything.prep.manifest["files_quarantined"]:
        error = entry["error"]
        assert "\n" not in error and len(error) < 400, error
        assert ";" in error, f"no fix after the problem: {error}"
        assert not re.search(r"Arrow|Traceback|Exception|Error\b", error), error
    assert everything.quarantined is not None
    for reason in everything.quarantined["__reason"]:
        if reason.startswith("line "):
            assert LINE_REASON.match(reason), reason
            assert "expected" in reason or "close the quote" in reason, reason
            continue
        for part in reason.split("; "):
            match = CONTRACT_REASON.match(part)
            assert match, part
            assert match["column"] in COLUMNS
            assert len(part) < 300, part
    assert everything.quarantine_manifest is not None
    assert everything.quarantine_manifest["reasons"]


@pytest.mark.parametrize("name", [n for n in CORPUS if n != GOOD_FILE])
def test_each_file_alone(name: str, tmp_path: Path) -> None:
    data, expectation = CORPUS[name]
    raw = write_corpus_spec(tmp_path)
    (raw / name).write_bytes(data)
    outcome = _run(tmp_path)
    report = outcome.prep
    manifest = outcome.quarantine_manifest
    if expectation.outcome == "file":
        assert report.outcome == "failed"
        assert report.error is not None
        assert "no usable rows; every file was quarantined" in report.error
        assert f"data/quarantine/{report.batch_id}/manifest.json" in report.error
        assert outcome.processed is None
        assert manifest is not None
        (entry,) = manifest["files_quarantined"]
        assert entry["path"] == PREFIX + name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert expectation.reason in entry["error"]
        return
    assert report.outcome == "ran", report.error
    assert outcome.processed is not None
    assert outcome.processed.height == expectation.good_rows
    if expectation.outcome == "accepted":
        assert manifest is None
        return
    assert manifest is not None
    assert manifest["rows_quarantined"] == len(expectation.bad_rows)
    reasons = _of(outcome.quarantined, name)["__reason"].to_list()
    for bad in expectation.bad_rows:
        assert [r for r in reasons if bad.reason in r], (bad, reasons)


def test_a_latin1_source_reads_latin1_text(tmp_path: Path) -> None:
    raw = write_corpus_spec(tmp_path)
    spec = tmp_path / "driftloop.yaml"
    glob = f"path: data/raw/{SOURCE}/*.csv"
    spec.write_text(spec.read_text().replace(glob, glob + "\n    csv: {encoding: latin-1}"))
    header = ",".join(COLUMNS)
    (raw / "latin.csv").write_bytes(
        f"{header}\n1,2024-01-01,1.5,new,ABC-001,café crème,1\n".encode("latin-1")
    )
    outcome = _run(tmp_path)
    assert outcome.prep.outcome == "ran", outcome.prep.error
    assert outcome.processed is not None
    assert outcome.processed["note"].to_list() == ["café crème"]
