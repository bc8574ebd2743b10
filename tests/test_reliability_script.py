"""benchmarks/reliability.py cannot rot: its fuzz trial runs here at a tiny size, and its
fuzzed files are what the trial says they are (seeded, both kinds, mutated)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.fuzz_files import fuzzed_files, valid_frame
from benchmarks.reliability import fuzz_group, main, unaccounted


def test_the_fuzzed_files_are_seeded_and_mutated() -> None:
    first = list(fuzzed_files(30, seed=7, kind="parquet"))
    assert first == list(fuzzed_files(30, seed=7, kind="parquet"))
    assert all(applied for _, _, applied in first)
    names = {m for _, _, applied in fuzzed_files(200, seed=7, kind="csv") for m in applied}
    assert {"truncated", "invalid_utf8", "extra_column", "huge_value", "nan_inf"} <= names


def test_a_file_neither_read_nor_reported_is_a_failure(tmp_path: Path) -> None:
    """The accounting can fail: a group's file that the pass never saw is named."""
    good = valid_frame(5, seed=1).write_csv().encode()
    project = tmp_path / "g"
    assert fuzz_group(project, [("a.csv", good, ["none"])], "csv") == []
    problems = unaccounted(project, [("a.csv", good, []), ("ghost.csv", good, ["x"])], "")
    assert len(problems) == 1 and "ghost.csv ['x']: neither read nor reported" in problems[0]


def test_the_command_prints_a_row_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--only", "fuzz-csv"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "| fuzzed CSV files" in out and "|     20 |        0 | ok" in out
