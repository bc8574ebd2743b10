"""The built-in ``shop`` example: its spec runs through prep and features, its dirty values
land where the contract says, its generator is seeded, and ``drift`` really drifts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from driftloop.core.errors import InitError
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.examples import EXAMPLES, write_batch, write_example
from driftloop.examples.shop import CHANNELS, SCHEMAS, generate
from driftloop.features.stage import read_features
from driftloop.init import init_example
from driftloop.pipeline import run

# the tests share the module's run of the shop example: one worker runs it
pytestmark = pytest.mark.xdist_group("examples")


def _manifest(project: Path, area: str, batch_id: str) -> dict[str, Any]:
    path = project / "data" / area / batch_id / "manifest.json"
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def _read(path: Path, table: str) -> pl.DataFrame:
    return pl.read_csv(path, schema=SCHEMAS[table])


def _batch(
    project: Path, *, batch: int, drift: float, rows: int = 5_000
) -> dict[str, pl.DataFrame]:
    orders, customers = write_batch(project, "shop", batch=batch, rows=rows, drift=drift)
    return {"orders": _read(orders, "orders"), "customers": _read(customers, "customers")}


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    project = tmp_path_factory.mktemp("shop")
    init_example(project, "shop")
    result = run(project)
    assert [(r.stage, r.outcome) for r in result.reports] == [
        ("prep", "ran"),
        ("features", "ran"),
        ("train", "ran"),
        ("promote", "ran"),
    ]
    return project, result.reports[0].batch_id


def test_example_spec_loads_and_uses_every_section(tmp_path: Path) -> None:
    write_example(tmp_path, "shop")
    spec = load_spec(tmp_path)
    assert [s.name for s in spec.sources] == ["orders", "customers"]
    join = spec.sources[1].join
    assert join is not None and join.on == ("customer_id",) and join.how == "left"
    assert spec.ingest.settle_seconds == 0
    assert set(spec.cleaning.impute) == {"discount", "age"}
    assert spec.features.exclude == ("order_id", "customer_id")
    assert spec.contract.columns["returned"].allowed == ("Yes", "No")  # not YAML booleans
    assert sorted(p.name for p in (tmp_path / "data" / "raw").rglob("*")) == [
        "customers",
        "customers-0001.csv",
        "orders",
        "orders-0001.csv",
    ]


def test_first_batch_runs_and_counts_add_up(shop_run: tuple[Path, str]) -> None:
    project, batch_id = shop_run
    prep = _manifest(project, "processed", batch_id)
    assert prep["rows_in"] == prep["rows_ok"] + prep["rows_quarantined"] + prep["rows_duplicate"]
    assert 5_000 <= prep["rows_in"] <= 5_200  # 5,000 orders plus about 1% resent
    assert 0 < prep["rows_quarantined"] < 0.05 * prep["rows_in"]
    assert prep["rows_duplicate"] > 0
    assert prep["imputed"]["age"]["filled"] > 0
    assert prep["imputed"]["discount"]["value"] == 0.0
    assert prep["imputed"]["discount"]["filled"] > 0
    features = _manifest(project, "features", batch_id)
    assert features["rows"] == prep["rows_ok"]
    assert {"ordered_at_hour", "amount_per_item", "log1p_amount", "age_band"} <= set(
        features["schema"]
    )
    assert not {"order_id", "customer_id"} & set(features["schema"])


def test_dirty_values_are_quarantined_for_the_documented_rules(shop_run: tuple[Path, str]) -> None:
    project, batch_id = shop_run
    reasons = {r["reason"] for r in _manifest(project, "quarantine", batch_id)["reasons"]}
    assert "column 'amount' breaks greater_than_or_equal_to(0.0)" in reasons  # negative amounts
    assert "column 'amount' breaks not_nullable" in reasons  # empty amounts
    assert "column 'age' breaks less_than_or_equal_to(100.0)" in reasons  # 130, 199, 999
    assert "column 'age' breaks greater_than_or_equal_to(18.0)" in reasons  # 0, 7
    assert any(r.startswith("column 'channel' breaks isin(") for r in reasons)  # 'marketplace'
    # every customer of every order was found: no join miss shows up as a missing segment
    assert not any("segment" in r for r in reasons)
    rows = pl.read_parquet(project / "data" / "quarantine" / batch_id / "rows.parquet")
    assert set(rows.get_column("channel").str.strip_chars()) - set(CHANNELS) <= {
        "marketplace",
        "partner",
        "unknown",
    }


def test_padded_and_missing_values_are_cleaned_not_quarantined(shop_run: tuple[Path, str]) -> None:
    project, batch_id = shop_run
    raw = pl.read_csv(project / "data/raw/orders/orders-0001.csv", infer_schema=False)
    padded = raw.filter(pl.col("channel") != pl.col("channel").str.strip_chars())
    assert padded.height > 50
    processed = pl.read_parquet(project / "data" / "processed" / batch_id / "data.parquet")
    assert set(processed.get_column("channel")) == set(CHANNELS)
    assert processed.get_column("age").null_count() == 0
    assert processed.get_column("discount").null_count() == 0
    kept_padded = processed.filter(
        pl.col("order_id").is_in(padded.get_column("order_id").cast(pl.Int64).implode())
    )
    assert kept_padded.height > 0.9 * padded.height


def test_a_later_batch_joins_returning_customers_and_runs(tmp_path: Path) -> None:
    init_example(tmp_path, "shop")
    run(tmp_path)
    paths = write_batch(tmp_path, "shop", batch=2, rows=1_500, drift=0.5)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "data/raw/orders/orders-0002.csv",
        "data/raw/customers/customers-0002.csv",
    ]
    assert not [p for p in (tmp_path / "data" / "raw").rglob(".*")]  # no temporary left over
    first = _read(tmp_path / "data/raw/orders/orders-0001.csv", "orders")
    second = _read(paths[0], "orders")
    assert second.get_column("ordered_at").min() > first.get_column("ordered_at").max()  # type: ignore[operator]
    assert not set(second.get_column("order_id")) & set(first.get_column("order_id"))
    customers = _read(paths[1], "customers").get_column("customer_id")
    assert (customers < 2_000_000).sum() > 100  # returning customers repeat their row
    result = run(tmp_path)
    outcomes = sorted((r.stage, r.outcome) for r in result.reports)
    assert outcomes == [
        ("features", "ran"),
        ("monitor", "ran"),  # the new batch checked against the champion
        ("prep", "ran"),
        ("promote", "ran"),
        ("train", "ran"),
    ]
    new = next(r for r in result.reports if r.stage == "prep" and r.outcome == "ran")
    prep = new.manifest
    assert prep["rows_in"] == prep["rows_ok"] + prep["rows_quarantined"] + prep["rows_duplicate"]
    reasons = _manifest(tmp_path, "quarantine", new.batch_id)["reasons"]
    assert not any("segment" in r["reason"] for r in reasons)


def _return_rate(orders: pl.DataFrame, condition: pl.Expr) -> float:
    return float(orders.filter(condition).select((pl.col("returned") == "Yes").mean()).item())


def test_drift_moves_covariates_and_concept(tmp_path: Path) -> None:
    calm = _batch(tmp_path / "calm", batch=2, drift=0.0)
    drifted = _batch(tmp_path / "drifted", batch=2, drift=1.0)
    calm_orders, drifted_orders = calm["orders"], drifted["orders"]

    def mean_amount(o: pl.DataFrame) -> float:
        return float(o.filter(pl.col("amount") > 0).get_column("amount").mean())  # type: ignore[arg-type]

    def share(o: pl.DataFrame, channel: str) -> float:
        return float((o.get_column("channel").str.strip_chars() == channel).mean())  # type: ignore[arg-type]

    assert mean_amount(drifted_orders) > 1.25 * mean_amount(calm_orders)
    assert share(drifted_orders, "app") > share(calm_orders, "app") + 0.2
    assert share(drifted_orders, "web") < share(calm_orders, "web") - 0.1
    ages = [
        d["customers"].filter(pl.col("age").is_between(18, 100)).get_column("age").mean()
        for d in (calm, drifted)
    ]
    assert ages[1] < ages[0] - 8  # type: ignore[operator]

    app, web = pl.col("channel") == "app", pl.col("channel") == "web"
    assert _return_rate(calm_orders, app) < _return_rate(calm_orders, web)  # app: fewer returns
    assert _return_rate(drifted_orders, app) > _return_rate(drifted_orders, web) + 0.15  # now more
    big, none = pl.col("discount") >= 0.3, pl.col("discount") == 0
    calm_gap = _return_rate(calm_orders, big) - _return_rate(calm_orders, none)
    drifted_gap = _return_rate(drifted_orders, big) - _return_rate(drifted_orders, none)
    assert calm_gap > drifted_gap + 0.1  # discounts explain returns less after drift


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 25) -> np.ndarray:
    """Plain Newton-Raphson logistic regression with a little ridge, for the signal check."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-3 * np.eye(x.shape[1])
        w -= np.linalg.solve(hessian, x.T @ (p - y) + 1e-3 * w)
    return w


def test_the_target_is_learnable(shop_run: tuple[Path, str]) -> None:
    project, batch_id = shop_run
    frame = read_features(Layout(project), batch_id).collect().sort("ordered_at")
    x = frame.select(
        pl.lit(1.0),
        "discount",
        "log1p_amount",
        "items",
        *[(pl.col("channel") == c).cast(pl.Float64).alias(c) for c in CHANNELS[1:]],
        *[(pl.col("segment") == s).cast(pl.Float64).alias(s) for s in ("plus", "business")],
    ).to_numpy()
    y = (frame.get_column("returned") == "Yes").to_numpy().astype(float)
    cut = int(0.8 * len(y))  # the newest fifth is the holdout, as the train stage will do
    w = _fit_logistic(x[:cut], y[:cut])
    accuracy = float(((x[cut:] @ w > 0) == (y[cut:] == 1)).mean())
    majority = max(y[cut:].mean(), 1 - y[cut:].mean())
    assert accuracy > majority + 0.03


def test_the_generator_is_deterministic_for_a_seed() -> None:
    one = generate(3, 800, drift=0.4, seed=7)
    two = generate(3, 800, drift=0.4, seed=7)
    other = generate(3, 800, drift=0.4, seed=8)
    for table in ("orders", "customers"):
        assert one[table].equals(two[table])
    assert not one["orders"].equals(other["orders"])
    known = {"customers": one["customers"]}
    again = generate(4, 800, seed=7, known=known)
    assert again["orders"].equals(generate(4, 800, seed=7, known=known)["orders"])


def test_write_batch_writes_the_same_bytes_for_a_seed(tmp_path: Path) -> None:
    a = write_batch(tmp_path / "a", "shop", batch=1, rows=300, drift=0.3, seed=5)
    b = write_batch(tmp_path / "b", "shop", batch=1, rows=300, drift=0.3, seed=5)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_an_unknown_example_name_is_an_init_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"'shopp' is not a built-in example; did you mean 'shop'"):
        init_example(tmp_path, "shopp")
    with pytest.raises(InitError, match=r"known: \['shop'\]"):
        write_batch(tmp_path, "bakery", batch=2, rows=10)
    assert not (tmp_path / "driftloop.yaml").exists()
    assert list(EXAMPLES) == ["shop"]


def test_batch_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"drift must be a number in \[0, 1\]; got 1.5 instead"):
        write_batch(tmp_path, "shop", batch=2, rows=10, drift=1.5)
    with pytest.raises(InitError, match=r"batch must be .*; rows must be"):
        write_batch(tmp_path, "shop", batch=0, rows=0)
