"""Prep on the real third-party datasets in ../shared/datasets, read in place."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from driftloop.pipeline import run

from .helpers import BANK_SPEC, features_of, link_raw, write_spec

pytestmark = pytest.mark.shared_data

TELCO_CONTRACT = """
contract:
  columns:
    customerID: {dtype: str, nullable: false, regex: '^\\d{4}-[A-Z]{5}$'}
    gender: {dtype: str, allowed: [Female, Male]}
    SeniorCitizen: {dtype: int, allowed: [0, 1]}
    Partner: {dtype: str, allowed: ["Yes", "No"]}
    Dependents: {dtype: str, allowed: ["Yes", "No"]}
    tenure: {dtype: int, min: 0, max: 100}
    PhoneService: {dtype: str}
    MultipleLines: {dtype: str}
    InternetService: {dtype: str}
    OnlineSecurity: {dtype: str}
    OnlineBackup: {dtype: str}
    DeviceProtection: {dtype: str}
    TechSupport: {dtype: str}
    StreamingTV: {dtype: str}
    StreamingMovies: {dtype: str}
    Contract: {dtype: str}
    PaperlessBilling: {dtype: str}
    PaymentMethod: {dtype: str}
    MonthlyCharges: {dtype: float, min: 0}
    TotalCharges: {dtype: float, min: 0, nullable: true}
    Churn: {dtype: str, nullable: false, allowed: ["Yes", "No"]}
cleaning:
  deduplicate: {enabled: true, subset: [customerID]}
ingest: {settle_seconds: 0, follow_links_outside: true}  # datasets linked in place
model: {enabled: false}  # prep and features only here
"""

TELCO_SPLIT = (
    """
name: telco
task: classification
target: Churn
id_column: customerID
sources:
  - name: customers
    path: data/raw/customers/*.csv
  - name: products
    path: data/raw/products/*.csv
    join: {on: [customerID], how: inner}
  - name: billing
    path: data/raw/billing/*.csv
    join: {on: [customerID], how: left}
"""
    + TELCO_CONTRACT
)

TELCO_SINGLE = (
    """
name: telco
task: classification
target: Churn
id_column: customerID
sources:
  - name: telco
    path: data/raw/telco/*.csv
"""
    + TELCO_CONTRACT
)


def processed(project: Path) -> tuple[pl.DataFrame, dict[str, object]]:
    [batch] = [p for p in (project / "data" / "processed").iterdir() if not p.name.startswith(".")]
    manifest = json.loads((batch / "manifest.json").read_text())
    return pl.read_parquet(batch / "data.parquet"), manifest


def test_telco_three_tables_join_to_the_single_table(datasets: Path, tmp_path: Path) -> None:
    split = datasets / "telco_churn" / "split"
    joined = tmp_path / "joined"
    write_spec(joined, TELCO_SPLIT)
    link_raw(joined, "customers", split / "customer-service.csv")
    link_raw(joined, "products", split / "products.csv")
    link_raw(joined, "billing", split / "billing.csv")
    single = tmp_path / "single"
    write_spec(single, TELCO_SINGLE)
    link_raw(single, "telco", datasets / "telco_churn" / "Telco-Customer-Churn.csv")

    for project in (joined, single):
        result = run(project)
        assert not result.failed, [r.error for r in result.failed]
    a, manifest = processed(joined)
    b, _ = processed(single)
    data_cols = [c for c in b.columns if not c.startswith("__")]
    assert a.select(data_cols).sort("customerID").equals(b.select(data_cols).sort("customerID"))
    assert a.height == 7043
    assert manifest["rows_in"] == manifest["rows_ok"] == 7043
    sources = {i["source"] for i in manifest["inputs"]}  # type: ignore[attr-defined]
    assert sources == {"customers", "products", "billing"}
    # The 11 blank TotalCharges (a single space) are missing values, all with tenure 0.
    blanks = a.filter(pl.col("TotalCharges").is_null())
    assert blanks.height == 11
    assert blanks.get_column("tenure").to_list() == [0] * 11
    assert a.schema["TotalCharges"] == pl.Float64


def test_telco_blank_totalcharges_follow_the_contract(datasets: Path, tmp_path: Path) -> None:
    """Non-nullable without imputation: the 11 blanks are quarantined with the rule."""
    spec = TELCO_SINGLE.replace(
        "TotalCharges: {dtype: float, min: 0, nullable: true}",
        "TotalCharges: {dtype: float, min: 0, nullable: false}",
    )
    write_spec(tmp_path, spec)
    link_raw(tmp_path, "telco", datasets / "telco_churn" / "Telco-Customer-Churn.csv")
    assert not run(tmp_path).failed
    rows, manifest = processed(tmp_path)
    assert manifest["rows_quarantined"] == 11
    assert rows.height == 7043 - 11
    [q] = [p for p in (tmp_path / "data" / "quarantine").iterdir()]
    bad = pl.read_parquet(q / "rows.parquet")
    assert bad.height == 11
    assert (
        bad.get_column("__reason").str.contains("column 'TotalCharges' breaks not_nullable").all()
    )
    assert bad.get_column("__file").unique().to_list() == [
        "data/raw/telco/Telco-Customer-Churn.csv"
    ]
    # Impute instead: every row is kept, the blanks become 0.0.
    imputed = spec.replace(
        "cleaning:\n", "cleaning:\n  impute: {TotalCharges: {strategy: constant, value: 0}}\n"
    )
    write_spec(tmp_path, imputed)
    assert not run(tmp_path).failed
    rows, manifest = processed(tmp_path)
    assert manifest["rows_ok"] == 7043
    assert manifest["imputed"]["TotalCharges"]["filled"] == 11  # type: ignore[index]


BANK = BANK_SPEC + "model: {enabled: false}  # prep and features only here\n"


def test_bank_semicolon_quoted_crlf_with_unknown_as_null(datasets: Path, tmp_path: Path) -> None:
    write_spec(tmp_path, BANK)
    link_raw(tmp_path, "bank", datasets / "bank_marketing" / "bank-additional-full.csv")
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    rows, manifest = processed(tmp_path)
    assert manifest["rows_in"] == 41188
    assert manifest["rows_quarantined"] == 0
    assert manifest["rows_duplicate"] == 12  # the 12 exact duplicate rows the README lists
    assert rows.height == 41188 - 12
    [q] = list((tmp_path / "data" / "quarantine").iterdir())
    dupes = pl.read_parquet(q / "duplicates.parquet")
    assert dupes.height == 12
    both = pl.concat([rows, dupes])
    nulls = {c: both.get_column(c).null_count() for c in ("job", "marital", "default", "loan")}
    assert nulls == {"job": 330, "marital": 80, "default": 8597, "loan": 990}
    assert rows.get_column("y").value_counts().sort("y").get_column("count").sum() == rows.height
    assert not rows.get_column("y").str.contains('"').any()  # quotes are gone
    assert not rows.get_column("y").str.contains("\r").any()  # so are the CR of CRLF
    assert rows.schema["emp.var.rate"] == pl.Float64
    features = features_of(tmp_path)
    assert "duration" not in features.columns


TAXI = """
name: taxi
task: classification
target: payment_type
time_column: pickup_datetime
sources:
  - name: trips
    path: data/raw/trips/*.csv
contract:
  columns:
    vendor_id: {dtype: int, allowed: [1, 2, 4]}
    pickup_datetime: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    dropoff_datetime: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S"}
    passenger_count: {dtype: int, min: 0, max: 9}
    trip_distance: {dtype: float, min: 0, max: 500}
    rate_code_id: {dtype: int}
    store_and_fwd_flag: {dtype: str, allowed: ["Y", "N"]}
    pickup_location_id: {dtype: int}
    dropoff_location_id: {dtype: int}
    payment_type: {dtype: int}
    fare_amount: {dtype: float, min: 0}
    extra: {dtype: float}
    mta_tax: {dtype: float}
    tip_amount: {dtype: float}
    tolls_amount: {dtype: float}
    improvement_surcharge: {dtype: float}
    total_amount: {dtype: float}
    congestion_surcharge: {dtype: float}
quarantine: {max_bad_share: 0.2}
features:
  datetime_parts: {pickup_datetime: [hour, weekday]}
  exclude: [total_amount, tip_amount]
ingest: {settle_seconds: 0, follow_links_outside: true}  # datasets linked in place
model: {enabled: false}  # prep and features only here
"""


def test_taxi_bad_fares_and_distances_quarantined_and_counts_add_up(
    datasets: Path, tmp_path: Path
) -> None:
    write_spec(tmp_path, TAXI)
    files = sorted((datasets / "nyc_taxi_yellow_sample").glob("*.csv"))
    link_raw(tmp_path, "trips", *files)
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    rows, manifest = processed(tmp_path)
    assert manifest["rows_in"] == 240_000
    assert (
        manifest["rows_ok"] + manifest["rows_quarantined"] + manifest["rows_duplicate"]  # type: ignore[operator]
        == 240_000
    )
    assert sum(i["rows"] for i in manifest["inputs"]) == 240_000  # type: ignore[attr-defined]
    assert rows.filter(pl.col("fare_amount") < 0).height == 0
    assert rows.filter(pl.col("trip_distance") > 500).height == 0
    [q] = list((tmp_path / "data" / "quarantine").iterdir())
    bad = pl.read_parquet(q / "rows.parquet")
    assert bad.height == manifest["rows_quarantined"]
    negative = bad.filter(pl.col("__reason").str.contains("'fare_amount' breaks greater_than"))
    assert negative.height == 754  # every negative fare, as the README counts them
    assert negative.get_column("__reason").str.contains(r"got '-").all()
    far = bad.filter(pl.col("__reason").str.contains("'trip_distance' breaks less_than"))
    assert "46826" in " ".join(far.get_column("trip_distance").to_list())
    # Each quarantined row says where it came from.
    assert bad.get_column("__file").str.starts_with("data/raw/trips/yellow_tripdata").all()
    assert (bad.get_column("__row") >= 1).all()
    summary = json.loads((q / "manifest.json").read_text())
    assert summary["reasons"][0]["rows"] > 0
