"""Files as they come (issue 11, section 2): separators followed by a space, a line above
the header, trailing blank lines. ``init`` finds the line to skip and writes it into the
spec; prep, ``monitor --current``'s reader and the request contract then see the same
values (trimmed, the line skipped, no empty record)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

import driftloop
from driftloop.core.layout import Layout, read_manifest
from driftloop.core.spec import load_spec
from driftloop.init import leading_junk, sniff_csv


def quirky(path: Path, rows: int, start: int = 0) -> Path:
    lines = ["Census extract, generated 2024-01-01", "age, workclass, fnlwgt, income"]
    for i in range(start, start + rows):
        work = ("Private", "State-gov")[i % 2]
        lines.append(f"{20 + i % 40}, {work}, {100_000 + 13 * i}, {'>50K' if i % 3 else '<=50K'}")
    path.write_text("\n".join(lines) + "\n\n\n", encoding="utf-8")  # two blank lines at the end
    return path


def test_leading_junk_counts_the_lines_above_the_table() -> None:
    table = "a,b,c\n1,2,3\n4,5,6\n7,8,9\n"
    assert leading_junk(table, ",") == 0
    assert leading_junk("Report of May\n\n" + table, ",") == 2
    assert leading_junk("title, with a comma\n" + table, ",") == 1
    assert leading_junk("one\ncolumn\nonly\n", ",") == 0


def test_init_prep_monitor_and_requests_agree_on_a_quirky_file(tmp_path: Path) -> None:
    sample = quirky(tmp_path / "census.csv", 60)
    opts = sniff_csv(sample)
    assert (opts.separator, opts.skip_rows) == (",", 1)
    project = tmp_path / "p"
    notes: list[str] = []
    driftloop.init_from_file(project, sample, "income", notes=notes)
    assert notes[0].startswith("skipped 1 line(s) above the header ('Census extract,")
    spec = load_spec(project)
    assert spec.primary.csv.skip_rows == 1
    assert list(spec.contract.columns) == ["age", "workclass", "fnlwgt", "income"]
    assert spec.contract.columns["workclass"].allowed == ("Private", "State-gov")
    with (project / "driftloop.yaml").open("a") as fh:
        fh.write("model: {enabled: false}\ningest: {settle_seconds: 0}\n")
    driftloop.run(project)
    later = quirky(project / "data/raw/census/later.csv", 30, start=60)
    result = driftloop.run(project)
    assert not result.failed, [r.error for r in result.failed]
    for folder in (project / "data/processed").glob("*/_SUCCESS"):
        m = read_manifest(folder.parent)
        assert m["rows_quarantined"] == 0 and m["rows_duplicate"] == 0
        assert m["rows_in"] in (60, 30)  # no record for the title or the blank lines
        assert "new_values" not in m  # ' Private' was trimmed to a listed value
    [batch] = [
        p.parent
        for p in (project / "data/processed").glob("*/manifest.json")
        if read_manifest(p.parent)["rows_in"] == 30
    ]
    processed = pl.read_parquet(batch / "data.parquet")

    from driftloop.monitoring.run import read_current_batch

    current, _ = read_current_batch(load_spec(project), Layout(project), later)
    # prep's rows: the data columns, then its lineage columns (__row, __file)
    assert [c for c in current.columns if not c.startswith("__")] == [
        "age",
        "workclass",
        "fnlwgt",
        "income",
    ]
    assert current.height == 30
    assert current.get_column("workclass").to_list() == processed.get_column("workclass").to_list()
    assert (
        current.get_column("age").cast(pl.Int64).to_list() == processed.get_column("age").to_list()
    )

    from driftloop.serving.records import RequestContract

    contract = RequestContract.from_spec(load_spec(project))
    record = {"age": 30, "workclass": " Private", "fnlwgt": 100_000}
    checked = contract.check(contract.records(record))
    assert checked.problems == {} and checked.flags == {}
    assert checked.typed.get_column("workclass").to_list() == ["Private"]
