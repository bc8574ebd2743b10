"""Joined (secondary) sources: typed keys, unusable rows quarantined, updates on their own."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from driftloop.pipeline import run

from .helpers import write_spec

SPEC = """
name: j
task: regression
target: amount
sources:
  - name: orders
    path: data/raw/orders/*.csv
  - name: customers
    path: data/raw/customers/*
    format: {fmt}
    join: {{on: [customer_id], how: {how}}}
contract:
  columns:
    order_id: {{dtype: int}}
    customer_id: {{dtype: int}}
    amount: {{dtype: float}}
    segment: {{dtype: str}}
ingest: {{settle_seconds: 0}}
model: {{enabled: false}}
"""


def land(project: Path, source: str, name: str, text: str) -> None:
    folder = project / "data" / "raw" / source
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def manifest(project: Path, batch: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(
        (project / "data/processed" / batch / "manifest.json").read_text()
    )
    return result


def test_keys_join_as_their_contract_type(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.format(fmt="parquet", how="inner"))
    land(tmp_path, "orders", "o.csv", "order_id,customer_id,amount\n1,1,10\n2,02,20\n3,3.0,30\n")
    folder = tmp_path / "data/raw/customers"
    folder.mkdir(parents=True)
    pl.DataFrame({"customer_id": [1.0, 2.0, 3.0], "segment": ["a", "b", "c"]}).write_parquet(
        folder / "c.parquet"
    )
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    [batch] = [p for p in (tmp_path / "data/processed").iterdir()]
    rows = pl.read_parquet(batch / "data.parquet").sort("order_id")
    assert rows.get_column("segment").to_list() == ["a", "b", "c"]  # '02' and '3.0' matched
    assert rows.get_column("customer_id").to_list() == [1, 2, 3]


def test_unusable_rows_of_a_joined_source_are_quarantined_and_counted(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.format(fmt="csv", how="left"))
    land(tmp_path, "orders", "o.csv", "order_id,customer_id,amount\n1,1,10\n2,2,20\n")
    land(tmp_path, "customers", "c.csv", "customer_id,segment\n1,x\n2,y,EXTRA\n,z\nabc,w\n")
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    [batch] = [p.name for p in (tmp_path / "data/processed").iterdir()]
    m = manifest(tmp_path, batch)
    assert m["secondary_rows_quarantined"] == 3
    rows_by_file = {i["path"]: i["rows"] for i in m["inputs"]}  # type: ignore[attr-defined]
    assert rows_by_file == {"data/raw/orders/o.csv": 2, "data/raw/customers/c.csv": 4}
    bad = pl.read_parquet(tmp_path / "data/quarantine" / batch / "secondary_rows.parquet")
    reasons = sorted(bad.get_column("__reason").to_list())
    assert any("row has 3 field(s), expected 2" in r for r in reasons)
    assert sum("join key ['customer_id'] is empty or not a valid value" in r for r in reasons) == 2
    assert set(bad.get_column("__file").to_list()) == {"data/raw/customers/c.csv"}


def test_a_batch_that_only_updates_a_joined_source_succeeds(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.format(fmt="csv", how="left"))
    land(tmp_path, "orders", "o.csv", "order_id,customer_id,amount\n1,1,10\n")
    land(tmp_path, "customers", "c.csv", "customer_id,segment\n1,x\n")
    run(tmp_path)
    land(tmp_path, "customers", "c2.csv", "customer_id,segment\n1,new\n2,y\n")
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    outcomes = [(r.stage, r.outcome) for r in result.reports]
    assert outcomes[-2:] == [("prep", "ran"), ("features", "ran")]
    assert result.reports[-2].manifest["rows_in"] == 0
    # The next order batch joins against the latest customer rows.
    land(tmp_path, "orders", "o2.csv", "order_id,customer_id,amount\n2,1,5\n3,2,6\n")
    result = run(tmp_path)
    assert not result.failed
    newest = sorted((tmp_path / "data/processed").iterdir())[-1]
    rows = pl.read_parquet(newest / "data.parquet").sort("order_id")
    assert rows.get_column("segment").to_list() == ["new", "y"]


def test_an_inner_join_miss_is_quarantined_with_its_rule(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.format(fmt="csv", how="inner"))
    orders = "1,1,10\n2,9,20\n3,2,x\n4,1,5\n5,2,6\n6,2,7\n"
    land(tmp_path, "orders", "o.csv", "order_id,customer_id,amount\n" + orders)
    land(tmp_path, "customers", "c.csv", "customer_id,segment\n1,a\n2,b\n")
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    [batch] = [p.name for p in (tmp_path / "data/quarantine").iterdir()]
    bad = pl.read_parquet(tmp_path / "data/quarantine" / batch / "rows.parquet").sort("__row")
    assert bad.get_column("__row").to_list() == [2, 3]
    assert bad.get_column("__rules").to_list() == [
        ["column 'customer_id' breaks join(customers): no row with this customer_id"],
        ["column 'amount' breaks dtype(float)"],
    ]
    assert bad.get_column("__reason")[1] == "column 'amount' breaks dtype(float): got 'x'"
    assert not any(c.startswith("__matched") for c in bad.columns)
