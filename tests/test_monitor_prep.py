"""Monitoring that agrees with prep: a raw file goes through the source's reading, cleaning
and contract (the rows prep keeps out are counted and listed, not scored), so it gets the
verdict of its processed batch; undefined metrics in the report; a column drift below the
dataset threshold has its own exit code and event; a check that errored in the loop is
retried. Small synthetic data and the in-memory registry (fast)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.core.events import ColumnDriftDetected, parse
from driftloop.core.layout import Layout
from driftloop.core.state import StateDB
from driftloop.monitoring.html import axis_label, performance_svg
from driftloop.monitoring.run import monitor
from driftloop.pipeline import run
from driftloop.testing import InMemoryRegistry, forget, memory_store

from .helpers import write_spec

SPEC = """
name: mon
task: classification
target: y
time_column: t
sources: [{name: s, path: data/raw/s/*.csv}]
contract:
  columns:
    t: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    x1: {dtype: float, nullable: false}
    x2: {dtype: float}
    z: {dtype: float}
    c: {dtype: str}
    y: {dtype: str, nullable: false}
ingest: {settle_seconds: 0}
monitoring: {permutations: 199}
"""


def rows(n: int, seed: int, start_day: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, z = rng.normal(size=n), rng.normal(size=n), rng.normal(280.0, 5.0, size=n)
    c = rng.choice(["a", "b", "c"], n)
    logit = 2.0 * x1 - x2 + (c == "a") * 1.0
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    t = [f"2024-01-{1 + start_day + i * 20 // n:02d} 10:{i % 60:02d}:00" for i in range(n)]
    return pl.DataFrame(
        {"t": t, "x1": x1.round(4), "x2": x2.round(4), "z": z.round(2), "c": c, "y": y}
    )


@pytest.fixture
def registry() -> Iterator[InMemoryRegistry]:
    found = memory_store("mon")
    yield found
    forget(found.uri)


def trained(project: Path, registry: InMemoryRegistry, **extra: Any) -> None:
    data = yaml.safe_load(SPEC)
    data["model"] = {"tracking_uri": registry.uri, "metric": "roc_auc"}
    data.update(extra)
    write_spec(project, yaml.safe_dump(data, sort_keys=False))
    raw = project / "data/raw/s"
    raw.mkdir(parents=True, exist_ok=True)
    rows(600, seed=1).write_csv(raw / "a.csv")
    result = run(project)
    assert not result.unresolved, result.unresolved
    assert registry.alias("champion") == "1"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """What a report concludes, without where the rows came from."""
    perf = report["performance"] or {}
    return {
        "rows": report["current"]["rows"],
        "columns": [(c["column"], c["value"], c["drift"]) for c in report["data_drift"]["columns"]],
        "target": report["target_drift"] and report["target_drift"]["value"],
        "prediction": report["prediction_drift"] and report["prediction_drift"]["value"],
        "performance": perf.get("overall"),
        "summary": {k: v for k, v in report["summary"].items()},
    }


def test_a_raw_file_gets_the_verdict_of_its_processed_batch(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    project = tmp_path / "p"
    trained(project, registry, retrain={"every_batches": 0})
    text = rows(400, seed=7, start_day=5).write_csv()
    lines = text.splitlines()
    # padded values (prep trims them), rows that break the contract, a duplicate row
    lines = [re.sub(r",([abc]),", r", \1 ,", line) for line in lines]
    lines[3] = "2024-01-06 10:03:00,abc,0.1,281.0,a,yes"  # x1 is not a number
    lines[4] = "2024-01-06 10:04:00,,0.2,281.0,b,no"  # x1 missing
    lines.append(lines[10])
    raw_file = tmp_path / "b.csv"
    raw_file.write_text("\n".join(lines) + "\n")
    (project / "data/raw/s/b.csv").write_text(raw_file.read_text())
    result = run(project)
    assert not result.unresolved
    [batch] = [r.batch_id for r in result.reports if r.stage == "prep" and r.outcome == "ran"]
    assert registry.alias("champion") == "1"  # no retraining: both compare with v1

    from_raw = monitor(project, current=raw_file, write=False, record_events=False).report
    processed = project / "data/processed" / batch
    from_batch = monitor(project, current=processed, write=False, record_events=False).report
    assert verdict(from_raw) == verdict(from_batch)
    assert from_raw["current"]["rows"] == 398  # 401 rows in: 2 quarantined, 1 duplicate
    assert "c" not in from_raw["data_drift"]["drifted_columns"]  # " a " is "a" after trimming
    prep = from_raw["current"]["prep"]
    assert (prep["rows_in"], prep["rows_ok"], prep["rows_quarantined"], prep["rows_duplicate"]) == (
        401,
        398,
        2,
        1,
    )
    shown = {(r["column"], r["example"]) for r in prep["quarantine_reasons"]}
    assert ("x1", "'abc'") in shown and ("x1", "null") in shown
    assert "prep" not in from_batch["current"]

    out = CliRunner().invoke(app, ["monitor", "-p", str(project), "--current", str(raw_file)])
    assert out.exit_code in (0, 3, 4), out.output
    assert "prep of the raw file: 401 rows in, 398 scored, 2 quarantined, 1 duplicate" in (
        out.stdout
    )
    assert "column 'x1' breaks" in out.stdout and "(e.g. 'abc')" in out.stdout


def test_undefined_metrics_are_reported_not_a_crash(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """Labels the model never saw: roc_auc is undefined in every window; the report (JSON,
    HTML, the CLI's summary) says so instead of failing with a TypeError."""
    trained(tmp_path, registry, retrain={"every_batches": 0})
    current = rows(300, seed=3, start_day=5).with_columns(
        pl.when(pl.col("y") == "yes").then(pl.lit("maybe")).otherwise(pl.lit("perhaps")).alias("y")
    )
    path = tmp_path / "labels.csv"
    current.write_csv(path)
    out = CliRunner().invoke(app, ["monitor", "-p", str(tmp_path), "--current", str(path)])
    assert out.exception is None or isinstance(out.exception, SystemExit), out.output
    assert out.exit_code in (0, 3, 4), out.output
    assert "performance: roc_auc undefined [undefined, undefined]" in out.stdout, out.stdout
    [html] = sorted((tmp_path / "data/monitoring/reports").glob("*.html"))
    page = html.read_text()
    assert "window(s) where roc_auc is undefined" in page
    report = monitor(tmp_path, current=path, write=False, record_events=False).report
    assert report["performance"]["overall"]["value"] is None
    assert report["performance"]["window_axis"] == "time"
    assert report["performance"]["windows"][0]["window"] == "2024-01-06 10:00"


def test_a_column_drift_below_the_dataset_threshold_exits_4_with_its_event(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """An input the model hardly uses, moved by +15 (a unit change upstream): the dataset
    does not drift by importance, but the run says so with exit code 4 and an event."""
    trained(tmp_path, registry, retrain={"every_batches": 0})
    same = rows(600, seed=1)  # the training rows themselves: nothing else moved
    path = tmp_path / "shifted.csv"
    same.with_columns(pl.col("z") + 15.0).write_csv(path)
    out = CliRunner().invoke(app, ["monitor", "-p", str(tmp_path), "--current", str(path)])
    assert out.exit_code == 4, out.output
    assert "COLUMN DRIFT: 1 feature(s) drifted (z), below the dataset threshold" in out.stdout
    assert "no dataset drift" in out.stdout and "1 of" in out.stdout
    with StateDB(Layout(tmp_path).state_db) as db:
        event = parse(db.last_event("ColumnDriftDetected") or {})
        assert db.last_event("DriftDetected") is None
    assert isinstance(event, ColumnDriftDetected)
    assert [c["column"] for c in event.columns] == ["z"]
    [html] = sorted((tmp_path / "data/monitoring/reports").glob("*.html"))
    assert "no dataset drift" in html.read_text() and "1 of" in html.read_text()

    plain = tmp_path / "same.csv"
    same.write_csv(plain)
    out = CliRunner().invoke(app, ["monitor", "-p", str(tmp_path), "--current", str(plain)])
    assert out.exit_code == 0, out.output


def test_a_check_that_errored_in_the_loop_is_retried(
    tmp_path: Path, registry: InMemoryRegistry
) -> None:
    """The policy trains on the new batch first and checks it after; a check that fails
    unexpectedly (here: the reports folder is a file) runs again on the next pass, against
    the champion it was for, though its batch is no longer new."""
    trained(tmp_path, registry)
    reports = Layout(tmp_path).reports
    reports.parent.mkdir(parents=True, exist_ok=True)
    reports.write_text("in the way")
    rows(400, seed=5, start_day=5).write_csv(tmp_path / "data/raw/s/b.csv")
    first = run(tmp_path)
    [check] = [r for r in first.reports if r.stage == "monitor"]
    assert check.outcome == "failed" and "retried on the next run" in str(check.error)
    assert any(r.stage == "train" and r.outcome == "ran" for r in first.reports)
    reports.unlink()
    second = run(tmp_path)
    [again] = [r for r in second.reports if r.stage == "monitor"]
    assert again.outcome == "ran", again.error
    assert again.manifest["champion_version"] == "1"
    assert not second.unresolved
    third = run(tmp_path)
    assert not [r for r in third.reports if r.stage == "monitor"]


def test_axis_labels_are_plain_numbers_never_clipped() -> None:
    assert [axis_label(v) for v in (500.0, 12345.6, 0.853, 0.0, 42.25, -3.5)] == [
        "500",
        "12,346",
        "0.853",
        "0",
        "42.2",
        "-3.5",
    ]
    windows: list[dict[str, Any]] = [
        {"window": f"2024-0{i + 1}-01", "value": v, "low": v - 20, "high": v + 20, "decayed": False}
        for i, v in enumerate((480.0, 500.0, 0.0, 1520.0))
    ]
    windows[2].update(value=None, low=None, high=None)  # undefined in that window
    perf = {"windows": windows, "holdout": 500.0, "tolerance": 0.1, "higher_is_better": False}
    svg = performance_svg({**perf, "metric": "rmse"}, None, x_title="time")
    texts = re.findall(r">([^<]+)<", svg)
    assert not [t for t in texts if re.search(r"\de[+-]?\d", t)]  # no scientific notation
    assert ">1,540<" in svg and ">460<" in svg and ">holdout 500<" in svg
    assert "undefined" in svg and "2024-04-01" in svg
    width = int(re.search(r'<line x1="(\d+)" y1="10"', svg).group(1))  # type: ignore[union-attr]
    assert width >= 6 * len("1,540")  # the y axis leaves room for its longest label
