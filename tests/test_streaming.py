"""The streaming reader gives the same result as the exact one, and falls back when it must."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from driftloop.pipeline import run
from driftloop.prep import stage as stages

from .helpers import link_raw, write_spec
from .test_datasets import TAXI


def outputs(project: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, object]]:
    [batch] = [p for p in (project / "data/processed").iterdir() if not p.name.startswith(".")]
    good = pl.read_parquet(batch / "data.parquet").sort("__file", "__row")
    bad = pl.read_parquet(project / "data/quarantine" / batch.name / "rows.parquet")
    manifest = json.loads((batch / "manifest.json").read_text())
    return good, bad.sort("__file", "__row"), manifest


@pytest.mark.shared_data
def test_streaming_and_exact_readers_agree_on_taxi(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted((datasets / "nyc_taxi_yellow_sample").glob("*2020-0[1-6].csv"))
    results = []
    for name, threshold in (("exact", 1 << 40), ("stream", 0)):
        monkeypatch.setattr(stages, "STREAM_MIN_BYTES", threshold)
        project = tmp_path / name
        write_spec(project, TAXI)
        link_raw(project, "trips", *files)
        result = run(project)
        assert not result.failed, [r.error for r in result.failed]
        results.append(outputs(project))
    (good_a, bad_a, man_a), (good_b, bad_b, man_b) = results
    assert man_a["streamed"] is False and man_b["streamed"] is True
    assert good_a.equals(good_b)
    assert bad_a.drop("__raw_line").equals(bad_b.drop("__raw_line"))
    for key in ("rows_in", "rows_ok", "rows_quarantined", "rows_duplicate", "inputs"):
        assert man_a[key] == man_b[key], key


SPEC = """
name: s
task: regression
target: y
sources: [{name: s, path: data/raw/s/*.csv}]
contract: {columns: {x: {dtype: float}, y: {dtype: float}, z: {dtype: str}}}
ingest: {settle_seconds: 0}
model: {enabled: false}  # prep and features only here
"""


def test_a_row_with_too_many_fields_falls_back_to_the_exact_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "STREAM_MIN_BYTES", 0)
    write_spec(tmp_path, SPEC)
    folder = tmp_path / "data/raw/s"
    folder.mkdir(parents=True)
    rows = [f"{i},{i * 2},a" for i in range(1, 200)]
    rows[100] = "1,2,3,4"
    (folder / "f.csv").write_text("x,y,z\n" + "\n".join(rows) + "\n")
    result = run(tmp_path)
    assert not result.failed
    good, bad, manifest = outputs(tmp_path)
    assert manifest["streamed"] is False  # re-read by the exact reader
    assert good.height == 198
    assert bad.get_column("__row").to_list() == [101]
    assert [i["rows"] for i in manifest["inputs"]] == [199]  # the row set aside counts too
    assert "row has 4 field(s), expected 3" in bad.get_column("__reason")[0]


def test_a_truncated_last_row_is_not_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "STREAM_MIN_BYTES", 0)
    write_spec(tmp_path, SPEC)
    folder = tmp_path / "data/raw/s"
    folder.mkdir(parents=True)
    body = "\n".join(f"{i},{i * 2},a" for i in range(1, 50))
    (folder / "f.csv").write_text("x,y,z\n" + body + "\n50,10")
    run(tmp_path)
    good, bad, manifest = outputs(tmp_path)
    assert manifest["streamed"] is False
    assert good.height == 49
    assert bad.get_column("__row").to_list() == [50]
    assert "truncated" in bad.get_column("__reason")[0]


def test_a_clean_large_file_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STREAM_MIN_BYTES", 0)
    write_spec(tmp_path, SPEC)
    folder = tmp_path / "data/raw/s"
    folder.mkdir(parents=True)
    body = "\n".join(f"{i},{i * 2},{'a' if i % 7 else ''}" for i in range(1, 500))
    (folder / "f.csv").write_text("x,y,z\n" + body + "\n" + "1,2,a\n")  # last row duplicates row 1
    run(tmp_path)
    good, _, manifest = outputs(tmp_path)
    assert manifest["streamed"] is True
    assert manifest["rows_in"] == 500 and manifest["rows_duplicate"] == 1
    assert [i["rows"] for i in manifest["inputs"]] == [500]
    assert good.get_column("z").null_count() == len([i for i in range(1, 500) if i % 7 == 0])
    assert good.get_column("__row").to_list() == list(range(1, 500))
