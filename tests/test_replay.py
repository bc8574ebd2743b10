"""``driftloop replay``: batches cut in stream order, three policies through the real loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from driftloop.core.errors import ProjectError
from driftloop.core.spec import parse_spec, read_yaml
from driftloop.orchestration.replay import cut

from .helpers import BIKE_SOURCE

BIKE = (
    BIKE_SOURCE
    + """contract:
  columns:
    dteday: {dtype: date, format: "%Y-%m-%d", nullable: false}
    hr: {dtype: int}
    cnt: {dtype: int, nullable: false}
"""
)


def test_batches_by_calendar_month_after_an_initial_year(datasets: Path) -> None:
    spec = parse_spec(read_yaml(BIKE))
    frame = pl.read_csv(datasets / "bike_sharing" / "hour.csv", infer_schema=False)
    frame = frame.select("dteday", "hr", "cnt").reverse()  # out of order on purpose
    parts = cut(frame, spec, batch_size=None, by="month", initial=None, initial_periods=12)
    assert len(parts) == 13  # 2011, then each month of 2012
    assert set(parts[0]["dteday"].str.slice(0, 4).to_list()) == {"2011"}
    months = [sorted(set(p["dteday"].str.slice(0, 7).to_list())) for p in parts[1:]]
    assert months == [[f"2012-{m:02d}"] for m in range(1, 13)]
    assert sum(p.height for p in parts) == frame.height
    assert parts[1]["dteday"].to_list() == sorted(parts[1]["dteday"].to_list())  # time order


def test_batches_by_rows_keep_row_order_without_a_time_column() -> None:
    spec = parse_spec(read_yaml(BIKE.replace("time_column: dteday", "time_column: null")))
    frame = pl.DataFrame(
        {"dteday": ["2024-01-02"] * 10, "hr": [str(i) for i in range(10)], "cnt": ["1"] * 10}
    )
    parts = cut(frame, spec, batch_size=3, by=None, initial=4, initial_periods=None)
    assert [p["hr"].to_list() for p in parts] == [
        ["0", "1", "2", "3"],
        ["4", "5", "6"],
        ["7", "8", "9"],
    ]
    with pytest.raises(ProjectError, match="exactly one of"):
        cut(frame, spec, batch_size=3, by="month", initial=None, initial_periods=None)
    with pytest.raises(ProjectError, match="needs a time_column"):
        cut(frame, spec, batch_size=None, by="week", initial=None, initial_periods=None)


ELEC2 = """
name: elec2
task: classification
target: class
sources: [{name: electricity, path: data/raw/electricity/*.csv}]
contract:
  columns:
    date: {dtype: float}
    day: {dtype: int, min: 1, max: 7}
    period: {dtype: float}
    nswprice: {dtype: float}
    nswdemand: {dtype: float}
    vicprice: {dtype: float}
    vicdemand: {dtype: float}
    transfer: {dtype: float}
    class: {dtype: str, allowed: [DOWN, UP], nullable: false}
cleaning: {deduplicate: {enabled: false}}
features: {exclude: [date]}
model: {metric: accuracy, split: arrival}
monitoring: {permutations: 199, performance: {tolerance: 0.05, window_rows: 200}}
retrain: {on_drift: false, on_decay: true}
"""


@pytest.mark.slow
@pytest.mark.shared_data
def test_replay_compares_three_policies_through_the_loop(datasets: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "driftloop.yaml").write_text(ELEC2)
    data = tmp_path / "elec2-head.csv"
    pl.read_csv(datasets / "elec2" / "electricity.csv", infer_schema=False).head(2400).write_csv(
        data
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftloop.cli",
            "replay",
            "-p",
            str(project),
            "--data",
            str(data),
            "--batch-size",
            "400",
            "--initial",
            "800",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = pl.read_csv(out / "replay.csv")
    assert rows.group_by("policy").len().sort("policy").rows() == [
        ("every_batch", 4),
        ("static", 4),
        ("triggered", 4),
    ]
    assert (rows["scored_rows"] == 400).all()
    static = rows.filter(pl.col("policy") == "static")
    assert static["retrained"].sum() == 0 and static["champion"].unique().to_list() == [1]
    every = rows.filter(pl.col("policy") == "every_batch")
    assert every["retrained"].all()  # trained after each batch (the gate decides promotion)
    triggered = rows.filter(pl.col("policy") == "triggered")
    reasons = [r for r in triggered["reason"].to_list() if r]
    assert all("performance degraded" in r for r in reasons)
    # The first batch is scored by the same first model under every policy.
    first = rows.filter(pl.col("batch") == 1)
    assert first["accuracy"].n_unique() == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["static"]["retrains"] == 0 and summary["every_batch"]["retrains"] == 4
    assert 0.5 < summary["static"]["metrics"]["accuracy"] <= 1.0
    page = (out / "replay.html").read_text()
    assert page.count("<polyline") == 3 and "retrains" in page  # accuracy: 1 chart x 3 policies
    assert "every_batch" in done.stdout and "report:" in done.stdout
