"""``driftloop monitor`` end to end on elec2: a champion trained on the first 10,000 rows,
then current data from later rows (a labelled batch, and the prediction log with feedback
written in serving's layout). The real CLI, the real registry and the real state database."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftloop.core.layout import Layout
from driftloop.core.state import StateDB
from driftloop.pipeline import run

from .helpers import write_spec

# one worker trains the module's project once for every test here
pytestmark = [pytest.mark.shared_data, pytest.mark.slow, pytest.mark.xdist_group("monitor_elec")]

BIN = Path(sys.executable).parent / "driftloop"

ELEC = """
name: elec
task: classification
target: class
sources:
  - name: elec
    path: data/raw/elec/*.csv
contract:
  columns:
    date: {dtype: float, nullable: false}
    day: {dtype: int, nullable: false}
    period: {dtype: float, nullable: false}
    nswprice: {dtype: float, nullable: false}
    nswdemand: {dtype: float, nullable: false}
    vicprice: {dtype: float, nullable: false}
    vicdemand: {dtype: float, nullable: false}
    transfer: {dtype: float, nullable: false}
    class: {dtype: str, allowed: [UP, DOWN], nullable: false}
features:
  exclude: [date]  # normalized calendar time: it only says "later"
ingest: {settle_seconds: 0}
# served as fitted without its holdout: test_the_holdout_rows_reproduce_the_holdout feeds the
# holdout back, which a model refit on all rows (the default) has learnt
model: {split: arrival, metric: accuracy, refit_on_all: false}
"""


def monitor_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # MLflow writes MLFLOW_TRACKING_URI into this process's environment when a test trains
    # in-process; a child must find each project's own store
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [str(BIN), "monitor", "-p", str(project), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def elec(datasets: Path) -> pl.DataFrame:
    return pl.read_csv(datasets / "elec2" / "electricity.csv")


@pytest.fixture(scope="module")
def project(elec: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("elec")
    write_spec(root, ELEC)
    raw = root / "data" / "raw" / "elec"
    raw.mkdir(parents=True)
    elec[:10_000].write_csv(raw / "early.csv")
    result = run(root)
    assert not result.failed
    return root


def test_late_labelled_batch_shows_decay_and_exits_3(
    project: Path, elec: pl.DataFrame, tmp_path: Path
) -> None:
    late = tmp_path / "late.csv"
    elec[22_000:32_000].write_csv(late)  # the stretch where the early model fails
    out = monitor_cli(project, "--current", str(late))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "performance: accuracy" in out.stdout and "DEGRADED" in out.stdout
    [report_path] = sorted((project / "data" / "monitoring" / "reports").glob("*.json"))[-1:]
    report = json.loads(report_path.read_text())
    perf = report["performance"]
    assert perf["degraded"] and perf["overall"]["high"] < perf["holdout"] - perf["tolerance"]
    assert sum(w["decayed"] for w in perf["windows"]) >= 5
    assert perf["detectors"]["detections"]["DDM"]["count"] >= 1
    # the imputed constant vic* block of the training rows is gone in later rows
    assert {"vicprice", "vicdemand", "transfer"} <= set(report["data_drift"]["drifted_columns"])
    estimate = report["estimated_performance"]
    assert estimate["kind"] == "estimate" and 0 < estimate["overall"]["accuracy"] <= 1
    html = report_path.with_suffix(".html").read_text()
    assert "<svg" in html and "http" not in html.replace("http-equiv", "")
    with StateDB(Layout(project).state_db) as db:
        kinds = [e["type"] for e in db.events(limit=20)]
    assert "PerformanceDegraded" in kinds and "DriftDetected" in kinds


def test_the_holdout_rows_reproduce_the_holdout(
    project: Path, elec: pl.DataFrame, tmp_path: Path
) -> None:
    # the arrival split held out rows 8,000-9,999: as current data they must give back the
    # holdout's own metric and prediction distribution
    held = tmp_path / "holdout.csv"
    elec[8_000:10_000].write_csv(held)
    out = monitor_cli(project, "--current", str(held), "--json")
    report = json.loads(out.stdout)
    perf = report["performance"]
    assert perf["overall"]["value"] == pytest.approx(perf["holdout"], abs=1e-12)
    assert not perf["degraded"]
    assert report["prediction_drift"]["value"] == 0.0 and not report["prediction_drift"]["drift"]
    assert report["estimated_performance"]["overall"]["accuracy"] == pytest.approx(
        perf["holdout"], abs=1e-9
    )
    # the holdout's weeks differ from the training weeks in nswprice and nswdemand, the
    # inputs the model relies on most: weighted by importance, that is dataset drift
    drift = report["data_drift"]
    assert drift["weights"] == "permutation_importance"
    assert set(drift["drifted_columns"]) == {"nswprice", "nswdemand"}
    assert drift["share_of_drifted_columns"] < 0.5 < drift["weighted_share_of_drifted_columns"]
    assert out.returncode == 3 == report["summary"]["exit_code"]
    # counted with equal weights, 2 of 7 inputs is not dataset drift: exit 4, column drift
    spec = project / "driftloop.yaml"
    original = spec.read_text()
    try:
        spec.write_text(original + "monitoring: {weight_by_importance: false}\n")
        plain = monitor_cli(project, "--current", str(held))
    finally:
        spec.write_text(original)
    assert plain.returncode == 4, plain.stdout + plain.stderr
    assert plain.stdout.splitlines()[-1].startswith("COLUMN DRIFT: 2 feature(s) drifted")
    assert "no dataset drift" in plain.stdout and "2 of 7 column(s) drifted" in plain.stdout


def write_log(project: Path, frame: pl.DataFrame, version: str, start: dt.datetime) -> None:
    """Predictions and feedback as serving writes them (date partitions, part files)."""
    from driftloop.core.spec import load_spec
    from driftloop.models.mlflow_registry import MlflowRegistry, load_predictor
    from driftloop.models.registry import open_registry

    spec = load_spec(project)
    registry = open_registry(spec, Layout(project))
    assert isinstance(registry, MlflowRegistry)
    predictor = load_predictor(registry, f"models:/elec/{version}")
    inputs = frame.drop("class")
    out = predictor.predict(inputs)
    ts = [start + dt.timedelta(minutes=30 * i) for i in range(frame.height)]
    own = pl.DataFrame(
        {
            "__ts": pl.Series(ts, dtype=pl.Datetime("us", "UTC")),
            "__request_id": [f"r{i // 2}" for i in range(frame.height)],
            "__record": pl.Series([i % 2 for i in range(frame.height)], dtype=pl.Int32),
            "__model_name": ["elec"] * frame.height,
            "__model_version": [version] * frame.height,
        }
    )
    outputs = out.rename({c: f"__{c}" for c in out.columns})
    log = (
        inputs.with_columns(pl.col("day").cast(pl.Int64))
        .hstack(own)
        .hstack(outputs)
        .with_columns(pl.lit(None, pl.String).alias("__flags"))
    )
    feedback = log.select("__ts", "__request_id", "__record").with_columns(
        frame.get_column("class").alias("__label")
    )
    for name, data in (("predictions", log), ("feedback", feedback)):
        for (day,), part in data.group_by(pl.col("__ts").dt.date(), maintain_order=True):
            folder = project / "data" / "monitoring" / name / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            half = part.height // 2  # two parts per day, the second without 'flags'
            part[:half].write_parquet(folder / "part-0.parquet")
            part[half:].drop("__flags", strict=False).write_parquet(folder / "part-1.parquet")


def test_prediction_log_window_with_feedback(project: Path, elec: pl.DataFrame) -> None:
    import driftloop

    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    write_log(project, elec[22_000:25_000], "1", start)
    now = start + dt.timedelta(days=40)
    result = driftloop.monitor(project, days=30, now=now)
    report = result.report
    cur = report["current"]
    assert cur["kind"] == "prediction_log"
    # 3,000 half-hourly rows span 62.5 days; the window keeps the last 30 days before now
    assert 0 < cur["rows"] < 3_000 and cur["labelled_rows_of_champion"] == cur["rows"]
    assert report["performance"]["degraded"] and result.exit_code == 3
    assert report["prediction_drift"] is not None
    assert Path(result.json_path or "").is_file() and Path(result.html_path or "").is_file()


def test_no_champion_and_no_data_are_said_and_a_missing_file_is_an_error(
    tmp_path: Path, project: Path
) -> None:
    write_spec(tmp_path, ELEC)
    out = monitor_cli(tmp_path)
    assert out.returncode == 6 and "nothing to monitor: model" in out.stderr
    assert "no champion" in out.stderr
    empty = monitor_cli(project, "--days", "0.01")
    assert empty.returncode == 6 and "nothing to monitor: no predictions" in empty.stderr
    said = json.loads(monitor_cli(project, "--days", "0.01", "--json").stdout)
    assert "no predictions" in said["nothing_to_monitor"]
    assert said["summary"]["drift_detected"] is False
    assert said["summary"]["performance_degraded"] is False
    missing = monitor_cli(project, "--current", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_monitor_rng_is_deterministic(project: Path, elec: pl.DataFrame, tmp_path: Path) -> None:
    import driftloop

    batch = tmp_path / "b.csv"
    elec[30_000:31_000].write_csv(batch)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    a = driftloop.monitor(project, current=batch, now=now, write=False, record_events=False)
    b = driftloop.monitor(project, current=batch, now=now, write=False, record_events=False)
    strip = lambda r: {k: v for k, v in r.items() if k != "timings"}  # noqa: E731
    assert strip(a.report) == strip(b.report)
    assert np.isfinite(a.report["data_drift"]["columns"][0]["value"])


def test_an_extreme_float_does_not_overflow_the_drift_tests(
    project: Path, elec: pl.DataFrame, tmp_path: Path
) -> None:
    """1e308 and -1e308 are valid floats under the contract: the drift tests must read them
    (issue 12: the range overflowed, a bin count became NaN and ``monitor`` crashed)."""
    late = elec[22_000:24_000].with_columns(
        nswprice=pl.when(pl.int_range(pl.len()) == 3)
        .then(1e308)
        .when(pl.int_range(pl.len()) == 4)
        .then(-1e308)
        .otherwise(pl.col("nswprice")),
        nswdemand=pl.when(pl.int_range(pl.len()) == 5).then(1.7e308).otherwise(pl.col("nswdemand")),
    )
    path = tmp_path / "extreme.csv"
    late.write_csv(path, float_scientific=True)
    out = monitor_cli(project, "--current", str(path), "--json")
    assert out.returncode in (0, 3, 4), out.stdout + out.stderr
    report = json.loads(out.stdout)
    columns = {c["column"]: c for c in report["data_drift"]["columns"]}
    for name in ("nswprice", "nswdemand"):
        column = columns[name]
        assert column["test"] is not None and column["value"] is not None, column
        assert column["current_count"] == 2_000  # the extreme values are counted, not dropped


def test_a_champion_is_read_once_per_process_and_again_when_its_package_changes(
    project: Path, elec: pl.DataFrame, tmp_path: Path
) -> None:
    """The loop's process checks every batch against the same champion: read once (and
    ahead, after a promotion); a package rewritten in place is read again."""
    from driftloop.core.spec import load_spec
    from driftloop.monitoring.run import load_champion, preload_champion

    spec, layout = load_spec(project), Layout(project)
    preload_champion(project, "1")
    first = load_champion(spec, layout)
    assert first.version == "1"
    assert first.predictor._pipeline is not None  # the preload loaded the pipeline too
    assert load_champion(spec, layout, "1") is first
    profile = first.predictor._folder / "reference_profile.json"
    stat = profile.stat()
    os.utime(profile, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = load_champion(spec, layout, "1")
    assert again is not first
    # and the report made on what was read once is the report made on a fresh read
    batch = tmp_path / "b.csv"
    elec[30_000:31_000].write_csv(batch)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    import driftloop

    a = driftloop.monitor(project, current=batch, now=now, write=False, record_events=False)
    os.utime(profile, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    b = driftloop.monitor(project, current=batch, now=now, write=False, record_events=False)
    strip = lambda r: {k: v for k, v in r.items() if k != "timings"}  # noqa: E731
    assert strip(a.report) == strip(b.report)
