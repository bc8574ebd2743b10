"""The model lifecycle end to end on the real datasets in ../shared/datasets: train, register
in the project's embedded MLflow, promote through the gate, load the champion elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from driftloop.core.layout import Layout
from driftloop.core.spec import Spec, load_spec
from driftloop.models.mlflow_registry import MlflowRegistry, load_predictor
from driftloop.models.registry import CHALLENGER, CHAMPION, open_registry
from driftloop.pipeline import RunResult, run

from .helpers import BIKE_SOURCE, link_raw, write_spec
from .test_datasets import BANK as DATASETS_BANK
from .test_datasets import TELCO_SINGLE

# the tests share the module's projects, one trained per dataset: one worker trains them
pytestmark = [pytest.mark.shared_data, pytest.mark.slow, pytest.mark.xdist_group("lifecycle_data")]

PREP_ONLY = "model: {enabled: false}  # prep and features only here"
# The prep tests' contracts, with training switched on.
BANK = DATASETS_BANK.replace(PREP_ONLY, "model: {split: arrival}  # rows are in date order")


BIKE = (
    BIKE_SOURCE
    + """contract:
  columns:
    instant: {dtype: int, nullable: false}
    dteday: {dtype: date, format: "%Y-%m-%d", nullable: false}
    season: {dtype: int, allowed: [1, 2, 3, 4]}
    yr: {dtype: int, allowed: [0, 1]}
    mnth: {dtype: int, min: 1, max: 12}
    hr: {dtype: int, min: 0, max: 23}
    holiday: {dtype: int, allowed: [0, 1]}
    weekday: {dtype: int, min: 0, max: 6}
    workingday: {dtype: int, allowed: [0, 1]}
    weathersit: {dtype: int, min: 1, max: 4}
    temp: {dtype: float, min: 0, max: 1}
    atemp: {dtype: float, min: 0, max: 1}
    hum: {dtype: float, min: 0, max: 1}
    windspeed: {dtype: float, min: 0, max: 1}
    casual: {dtype: int, min: 0}
    registered: {dtype: int, min: 0}
    cnt: {dtype: int, min: 0, nullable: false}
features:
  exclude: [instant, casual, registered]  # an id that leaks time; cnt = casual + registered
ingest: {settle_seconds: 0, follow_links_outside: true}  # datasets linked in place
model: {split: time}
"""
)

TELCO = TELCO_SINGLE.replace(PREP_ONLY, "")


@dataclass(frozen=True)
class Case:
    spec: str
    source: str
    files: tuple[str, ...]  # relative to ../shared/datasets
    split: str  # the split the train stage must report


CASES = {
    "bank": Case(BANK, "bank", ("bank_marketing/bank-additional-full.csv",), "arrival"),
    "bike": Case(BIKE, "hours", ("bike_sharing/hour.csv",), "time"),
    "telco": Case(TELCO, "telco", ("telco_churn/Telco-Customer-Churn.csv",), "random"),
}


@dataclass(frozen=True)
class Trained:
    project: Path
    manifest: dict[str, Any]


def train_manifest(result: RunResult) -> dict[str, Any]:
    """The manifest of the train stage that this pass ran (not a cache hit), with the
    decision of the promote stage that followed it."""
    assert not result.failed, [(r.stage, r.error) for r in result.failed]
    [report] = [r for r in result.reports if r.stage == "train"]
    assert report.outcome == "ran", (report.outcome, report.error)
    [promote] = [r for r in result.reports if r.stage == "promote"]
    assert promote.outcome == "ran", (promote.outcome, promote.error)
    assert promote.manifest["version"] == report.manifest["version"]
    return {**report.manifest, "decision": promote.manifest["decision"]}


def opened(project: Path) -> tuple[Spec, Layout]:
    """The project's spec and layout."""
    return load_spec(project), Layout(project)


def train_fresh(project: Path, datasets: Path, name: str) -> Trained:
    case = CASES[name]
    write_spec(project, case.spec)
    link_raw(project, case.source, *(datasets / f for f in case.files))
    opened(project)
    return Trained(project, train_manifest(run(project)))


def champion(project: Path) -> str | None:
    return open_registry(*opened(project)).alias(CHAMPION)


@pytest.fixture(scope="module", autouse=True)
def embedded_mlflow() -> Iterator[None]:
    """Every project uses its own sqlite store; the environment is restored afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    for key in saved:
        del os.environ[key]
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def one_openmp_thread() -> Iterator[None]:
    """HistGradientBoosting on one OpenMP thread: with its threads spin-waiting at every
    split, a 2-core machine shared with other jobs makes a one-second fit take a minute.
    Its results do not depend on the thread count."""
    import sklearn.ensemble  # noqa: F401  loads libgomp, which threadpool_limits then limits
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def trained(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trained]:
    """One fresh project per dataset, trained on first use and shared by the module's tests."""
    done: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in done:
            done[name] = train_fresh(tmp_path_factory.mktemp(name), datasets, name)
        return done[name]

    return get


def test_bank_trains_registers_and_promotes(trained: Callable[[str], Trained]) -> None:
    manifest = trained("bank").manifest
    auc, baseline = manifest["metrics"]["roc_auc"], manifest["baseline"]["roc_auc"]
    assert baseline == pytest.approx(0.5)  # the prior: one score for every row
    assert auc > 0.6
    assert auc > baseline


def test_bike_trains_registers_and_promotes(trained: Callable[[str], Trained]) -> None:
    manifest = trained("bike").manifest
    rmse, baseline = manifest["metrics"]["rmse"], manifest["baseline"]["rmse"]
    assert rmse < 0.6 * baseline
    assert manifest["metrics"]["r2"] > 0.5


def test_telco_trains_registers_and_promotes(trained: Callable[[str], Trained]) -> None:
    manifest = trained("telco").manifest
    assert manifest["metrics"]["roc_auc"] > 0.75
    assert manifest["baseline"]["roc_auc"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", list(CASES))
def test_first_model_is_version_1_and_champion(
    trained: Callable[[str], Trained], name: str
) -> None:
    t = trained(name)
    manifest = t.manifest
    assert manifest["model"] == name
    assert manifest["version"] == "1"
    assert manifest["split"] == CASES[name].split
    assert manifest["decision"]["decision"] == "promoted", manifest["decision"]
    assert manifest["decision"]["reason"].startswith("first model")
    rows = manifest["train_rows"] + manifest["holdout_rows"]
    # A time split keeps the rows of one timestamp together (bike: 24 hours share a date).
    assert manifest["holdout_rows"] == pytest.approx(0.2 * rows, abs=24)
    assert champion(t.project) == "1"


@pytest.mark.parametrize("name", ["telco", "bank"])  # random split; early stopping (>10k rows)
def test_same_data_spec_and_seed_give_the_same_metrics(
    trained: Callable[[str], Trained], datasets: Path, tmp_path: Path, name: str
) -> None:
    first = trained(name).manifest
    second = train_fresh(tmp_path, datasets, name).manifest
    assert second["metrics"] == first["metrics"]
    assert second["baseline"] == first["baseline"]
    assert (second["train_rows"], second["holdout_rows"]) == (
        first["train_rows"],
        first["holdout_rows"],
    )


LOAD_AND_PREDICT = """
import sys

import mlflow
import pandas as pd

tracking_uri, model_uri, records, out = sys.argv[1:]
mlflow.set_tracking_uri(tracking_uri)
model = mlflow.pyfunc.load_model(model_uri)
model.predict(pd.read_parquet(records)).to_parquet(out)
"""


def raw_records(project: Path, *, dates_as_text: bool, n: int = 200) -> Any:
    """About n rows spread over the processed data, as raw contract columns in pandas."""
    spec = load_spec(project)
    [batch] = [p for p in (project / "data" / "processed").iterdir() if not p.name.startswith(".")]
    rows = pl.read_parquet(batch / "data.parquet")
    columns = [c for c in spec.contract.columns if c != spec.target]
    picked = rows.select(columns).gather_every(rows.height // n).head(n)
    if dates_as_text:  # as the CSV has them
        picked = picked.with_columns(pl.col(pl.Date, pl.Datetime).cast(pl.String))
    return picked.to_pandas()


@pytest.mark.parametrize(
    ("name", "dates_as_text"),
    [
        ("bank", False),
        ("telco", False),
        ("bike", True),
        ("bike", False),
    ],
)
def test_champion_loaded_in_another_process_predicts_the_same(
    trained: Callable[[str], Trained], tmp_path: Path, name: str, dates_as_text: bool
) -> None:
    project = trained(name).project
    spec, layout = opened(project)
    registry = open_registry(spec, layout)
    assert isinstance(registry, MlflowRegistry)
    uri = registry.uri
    assert uri == f"sqlite:///{project / 'mlflow.db'}"
    model_uri = f"models:/{spec.name}@champion"
    records = raw_records(project, dates_as_text=dates_as_text)
    assert len(records) == 200
    here = load_predictor(registry, model_uri).predict(records)

    records.to_parquet(tmp_path / "records.parquet")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    moved = project / "driftloop.yaml.away"
    (project / "driftloop.yaml").rename(moved)  # the loader must not need the project's spec
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD_AND_PREDICT,
                uri,
                model_uri,
                str(tmp_path / "records.parquet"),
                str(tmp_path / "out.parquet"),
            ],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,  # a hang guard: at load 20 loading the model took over 120 s
        )
    finally:
        moved.rename(project / "driftloop.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    there = pl.read_parquet(tmp_path / "out.parquet")
    assert there.columns == here.columns
    assert there.height == 200
    assert_frame_equal(there, here, check_dtypes=False, rel_tol=0.0, abs_tol=1e-9)
    if spec.task == "classification":
        assert set(here.get_column("prediction").unique()) <= {"no", "yes", "No", "Yes"}
        assert here.get_column(here.columns[-1]).std() > 0  # not a constant score


def test_worse_challenger_is_rejected_and_the_champion_stays(
    datasets: Path, tmp_path: Path
) -> None:
    first = train_fresh(tmp_path, datasets, "bike")
    assert first.manifest["decision"]["decision"] == "promoted"
    stump = BIKE.replace(
        "model: {split: time}",
        "model: {split: time, params: {max_iter: 1, max_depth: 1}}\n"
        "promotion: {min_improvement: 0.0}",
    )
    write_spec(tmp_path, stump)
    opened(tmp_path)
    second = train_manifest(run(tmp_path))

    assert second["version"] == "2"
    decision = second["decision"]
    assert decision["decision"] == "rejected", decision
    assert decision["champion_version"] == "1"
    challenger, held = decision["challenger_score"], decision["champion_score"]
    assert challenger == second["metrics"]["rmse"]
    assert held < challenger  # lower rmse: the champion is better
    # The same data and holdout settings give the same holdout, so the champion re-scored
    # from raw columns reproduces the figure it was trained with: no training/serving skew.
    assert held == pytest.approx(first.manifest["metrics"]["rmse"], rel=1e-9)
    assert f"{challenger:.4f}" in decision["reason"]
    assert f"{held:.4f}" in decision["reason"]
    spec, layout = opened(tmp_path)
    registry = open_registry(spec, layout)
    assert registry.alias(CHAMPION) == "1"
    assert registry.alias(CHALLENGER) == "2"
    tags = {v.version: v.tags for v in registry.versions()}
    assert tags["2"]["driftloop.decision"] == "rejected"
    assert tags["1"]["driftloop.decision"] == "promoted"


def test_each_project_keeps_its_own_registry(datasets: Path, tmp_path: Path) -> None:
    first = train_fresh(tmp_path / "first", datasets, "telco")
    assert first.manifest["version"] == "1"
    second = tmp_path / "second"  # the same process, as in a notebook or a test session
    case = CASES["telco"]
    write_spec(second, case.spec)
    link_raw(second, case.source, *(datasets / f for f in case.files))
    spec, layout = load_spec(second), Layout(second)
    assert open_registry(spec, layout).uri == f"sqlite:///{second / 'mlflow.db'}"
    manifest = train_manifest(run(second))
    assert manifest["version"] == "1"
    assert (second / "mlflow.db").is_file()
