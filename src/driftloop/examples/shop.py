"""The ``shop`` example: weekly raw exports of an online shop, with a return to predict.

Two tables land each week. ``orders`` (the primary source) has one row per order and the
target ``returned`` (Yes/No); ``customers`` has one row per customer who ordered that week,
new ones and returning ones (a returning customer's row is repeated as first written).

The target has a real signal: the chance of a return is logistic in the discount, the
amount, the number of items, the channel and the customer's segment. ``drift`` in [0, 1]
moves both the inputs (higher amounts, more app orders and mobile devices, more discounts,
younger new customers) and the concept (at ``drift=1`` app orders are the ones returned,
discounts matter less and young customers return more), so later batches drift.

The raw data is dirty on purpose, at small rates, so every prep rule has work to do:
padded strings, empty cells, negative amounts, absurd ages, unknown channel labels and
exact duplicate rows. ``SPEC`` says what the contract does with each.

Everything here is pure: ``generate`` draws from ``numpy.random.default_rng(seed + batch)``
and returns frames; writing them is the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

TABLES = ("orders", "customers")
START = datetime(2024, 1, 1)  # a Monday; batch N covers the N-th week from here
ID_BLOCK = 1_000_000  # order and customer ids of batch N are N * ID_BLOCK + 1, + 2, ...
MAX_ROWS = ID_BLOCK - 1
DEFAULT_ROWS = 5_000

CHANNELS = ("web", "app", "store", "phone")
UNKNOWN_CHANNELS = ("marketplace", "partner", "unknown")
DEVICES = ("desktop", "mobile", "tablet")
SEGMENTS = ("standard", "plus", "business")
REGIONS = ("north", "south", "east", "west")
DISCOUNTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
ABSURD_AGES = (0, 7, 130, 199, 999)

# share of values made dirty, per kind
PADDED = 0.03
MISSING = 0.02
NEGATIVE_AMOUNT = 0.005
MISSING_AMOUNT = 0.003
UNKNOWN_CHANNEL = 0.005
ABSURD_AGE = 0.005
DUPLICATE = 0.01
RETURNING = 0.4  # share of orders placed by customers seen in earlier batches

ORDER_SCHEMA: dict[str, pl.DataType] = {
    "order_id": pl.Int64(),
    "customer_id": pl.Int64(),
    "ordered_at": pl.Datetime("us"),
    "amount": pl.Float64(),
    "items": pl.Int64(),
    "discount": pl.Float64(),
    "channel": pl.String(),
    "device": pl.String(),
    "returned": pl.String(),
}
CUSTOMER_SCHEMA: dict[str, pl.DataType] = {
    "customer_id": pl.Int64(),
    "segment": pl.String(),
    "region": pl.String(),
    "age": pl.Int64(),
    "signup_date": pl.Date(),
}
SCHEMAS = {"orders": ORDER_SCHEMA, "customers": CUSTOMER_SCHEMA}


@dataclass(frozen=True)
class ReturnModel:
    """Log-odds of a return as a sum of effects; labels index ``channel`` and ``segment``."""

    intercept: float
    discount: float
    log_amount: float
    items: float
    age: float
    channel: tuple[float, float, float, float]  # web, app, store, phone
    segment: tuple[float, float, float]  # standard, plus, business

    def logit(self, x: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(
            self.intercept
            + self.discount * x["discount"]
            + self.log_amount * (np.log(x["amount"]) - 4.0)
            + self.items * (x["items"] - 2)
            + self.age * (x["age"] - 40)
            + np.asarray(self.channel)[x["channel"]]
            + np.asarray(self.segment)[x["segment"]]
        )


# At drift 0 discounts, big baskets, phone orders and standard customers are returned; at
# drift 1 app orders and young customers are, and discounts hardly matter. A batch uses
# the blend (1 - drift) * BEFORE + drift * AFTER of the two log-odds.
BEFORE = ReturnModel(-1.3, 7.0, 1.6, 0.3, 0.0, (0.0, -0.8, -2.2, 1.2), (0.0, -0.6, -1.4))
AFTER = ReturnModel(-1.6, 1.5, 0.3, 0.3, -0.06, (0.0, 1.6, -0.6, -0.8), (0.0, 0.5, 0.3))


def week_start(batch: int) -> datetime:
    return START + timedelta(weeks=batch - 1)


def _mix(before: tuple[float, ...], after: tuple[float, ...], drift: float) -> np.ndarray:
    p = (1 - drift) * np.asarray(before) + drift * np.asarray(after)
    return np.asarray(p / p.sum())


def _new_customers(rng: np.random.Generator, batch: int, n: int, drift: float) -> pl.DataFrame:
    start = week_start(batch).date()
    tenure_days = rng.exponential(300.0 if batch == 1 else 20.0, n).astype(int)
    return pl.DataFrame(
        {
            "customer_id": batch * ID_BLOCK + np.arange(1, n + 1),
            "segment": np.asarray(SEGMENTS)[
                rng.choice(3, n, p=_mix((0.6, 0.3, 0.1), (0.5, 0.3, 0.2), drift))
            ],
            "region": np.asarray(REGIONS)[
                rng.choice(4, n, p=_mix((3, 3, 2, 2), (2, 2, 3, 3), drift))
            ],
            "age": np.clip(rng.normal(44 - 12 * drift, 14, n), 18, 90).round().astype(int),
            "signup_date": [start - timedelta(days=int(d)) for d in tenure_days],
        },
        schema=CUSTOMER_SCHEMA,
    )


def _timestamps(rng: np.random.Generator, batch: int, n: int) -> list[datetime]:
    hour_weight = np.array(
        [1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 7, 7, 6, 6, 6, 7, 9, 10, 10, 8, 5, 2]
    )
    hours = rng.choice(24, n, p=hour_weight / hour_weight.sum())
    seconds = rng.integers(0, 7, n) * 86_400 + hours * 3_600 + rng.integers(0, 3_600, n)
    start = week_start(batch)
    return sorted(start + timedelta(seconds=int(s)) for s in seconds)


def _orders(
    rng: np.random.Generator,
    batch: int,
    customer_ids: np.ndarray,
    people: pl.DataFrame,
    drift: float,
) -> pl.DataFrame:
    """Clean orders for the given customers (``people`` holds their segment and age)."""
    n = len(customer_ids)
    channel = rng.choice(4, n, p=_mix((0.5, 0.25, 0.15, 0.1), (0.3, 0.55, 0.1, 0.05), drift))
    p_desktop = 0.6 - 0.3 * drift
    web_device = rng.choice(3, n, p=(p_desktop, 0.95 - p_desktop, 0.05))
    app_device = rng.choice((1, 2), n, p=(0.85, 0.15))
    device = np.where(channel == 0, web_device, np.where(channel == 1, app_device, -1))
    items = 1 + rng.poisson(1.2, n)
    discounted = rng.random(n) < 0.35 + 0.25 * drift
    discount = np.where(
        discounted, rng.choice(DISCOUNTS, n, p=(0.2, 0.25, 0.15, 0.15, 0.15, 0.1)), 0.0
    )
    unit_price = rng.lognormal(3.3 + 0.4 * drift, 0.7 + 0.1 * drift, n)
    amount = np.maximum(items * unit_price * (1 - discount), 0.5).round(2)

    who = pl.DataFrame({"customer_id": customer_ids}).join(people, on="customer_id", how="left")
    segment_label = who.get_column("segment").str.strip_chars().fill_null("standard").to_list()
    segment = np.array([SEGMENTS.index(s) if s in SEGMENTS else 0 for s in segment_label])
    age = who.get_column("age").fill_null(40).clip(18, 90).to_numpy()
    x = {
        "discount": discount,
        "amount": amount,
        "items": items,
        "channel": channel,
        "segment": segment,
        "age": age,
    }
    logit = (1 - drift) * BEFORE.logit(x) + drift * AFTER.logit(x)
    returned = rng.random(n) < 1 / (1 + np.exp(-logit))

    return pl.DataFrame(
        {
            "order_id": batch * ID_BLOCK + np.arange(1, n + 1),
            "customer_id": customer_ids,
            "ordered_at": _timestamps(rng, batch, n),
            "amount": amount,
            "items": items,
            "discount": discount,
            "channel": np.asarray(CHANNELS)[channel],
            "device": [DEVICES[d] if d >= 0 else None for d in device],
            "returned": np.where(returned, "Yes", "No"),
        },
        schema=ORDER_SCHEMA,
    )


def _pad(rng: np.random.Generator, column: str, share: float, n: int) -> pl.Expr:
    """Pad a share of the values with spaces, as a hand-typed export would."""
    hit = pl.Series(rng.random(n) < share)
    style = pl.Series(rng.integers(0, 3, n))
    col = pl.col(column)
    padded = (
        pl.when(style == 0)
        .then(pl.lit(" ") + col)
        .when(style == 1)
        .then(col + pl.lit(" "))
        .otherwise(pl.lit("  ") + col + pl.lit("  "))
    )
    return pl.when(hit).then(padded).otherwise(col).alias(column)


def _blank(rng: np.random.Generator, column: str, share: float, n: int) -> pl.Expr:
    return (
        pl.when(pl.Series(rng.random(n) < share)).then(None).otherwise(pl.col(column)).alias(column)
    )


def _dirty_orders(rng: np.random.Generator, orders: pl.DataFrame) -> pl.DataFrame:
    n = orders.height
    unknown = pl.Series(np.asarray(UNKNOWN_CHANNELS)[rng.integers(0, len(UNKNOWN_CHANNELS), n)])
    dirty = (
        orders.with_columns(
            pl.when(pl.Series(rng.random(n) < NEGATIVE_AMOUNT))
            .then(-pl.col("amount"))
            .otherwise(pl.col("amount"))
            .alias("amount"),
            pl.when(pl.Series(rng.random(n) < UNKNOWN_CHANNEL))
            .then(unknown)
            .otherwise(pl.col("channel"))
            .alias("channel"),
        )
        .with_columns(
            _blank(rng, "amount", MISSING_AMOUNT, n),
            _blank(rng, "discount", MISSING, n),
            _blank(rng, "device", MISSING, n),
        )
        .with_columns(_pad(rng, "channel", PADDED, n), _pad(rng, "device", PADDED, n))
    )
    resent = np.flatnonzero(rng.random(n) < DUPLICATE)
    with_copies = pl.concat([dirty, dirty[resent]])
    return with_copies.sort("ordered_at", maintain_order=True)


def _dirty_customers(rng: np.random.Generator, customers: pl.DataFrame) -> pl.DataFrame:
    n = customers.height
    absurd = pl.Series(np.asarray(ABSURD_AGES)[rng.integers(0, len(ABSURD_AGES), n)])
    return (
        customers.with_columns(
            pl.when(pl.Series(rng.random(n) < ABSURD_AGE))
            .then(absurd)
            .otherwise(pl.col("age"))
            .alias("age"),
        )
        .with_columns(
            _blank(rng, "age", MISSING, n),
            _blank(rng, "region", MISSING, n),
        )
        .with_columns(_pad(rng, "segment", PADDED, n), _pad(rng, "region", PADDED, n))
    )


def generate(
    batch: int,
    rows: int,
    *,
    drift: float = 0.0,
    seed: int = 0,
    known: Mapping[str, pl.DataFrame] | None = None,
) -> dict[str, pl.DataFrame]:
    """Raw ``orders`` and ``customers`` of one weekly batch, dirty as they would land.

    ``rows`` is the number of distinct orders (about 1% more rows land as duplicates).
    ``known["customers"]``, the customers files of earlier batches, lets ~40% of orders come
    from returning customers, whose rows are repeated unchanged.
    """
    rng = np.random.default_rng(seed + batch)
    earlier = (known or {}).get("customers")
    if earlier is not None and earlier.height:
        earlier = earlier.unique("customer_id", keep="last", maintain_order=True)
        n_returning = int(rng.binomial(rows, RETURNING))
    else:
        earlier, n_returning = pl.DataFrame(schema=CUSTOMER_SCHEMA), 0
    n_new_orders = rows - n_returning
    n_new = max(1, round(n_new_orders / 1.4)) if n_new_orders else 0
    new = _dirty_customers(rng, _new_customers(rng, batch, n_new, drift))
    ids = np.concatenate(
        [
            rng.choice(earlier.get_column("customer_id").to_numpy(), n_returning),
            new.get_column("customer_id").to_numpy()[rng.integers(0, max(n_new, 1), n_new_orders)],
        ]
    ).astype(np.int64)
    rng.shuffle(ids)
    returning = earlier.filter(pl.col("customer_id").is_in(pl.Series(ids).implode()))
    customers = pl.concat([returning, new]).sort("customer_id", maintain_order=True)
    orders = _dirty_orders(rng, _orders(rng, batch, ids, customers, drift))
    return {"orders": orders, "customers": customers}


SPEC = """\
# driftloop project spec for the built-in 'shop' example (driftloop init --example shop).
# An online shop exports two CSV files a week: the week's orders, and the customers who
# ordered. The model predicts whether an order is returned. Later weeks drift.
# Every key is checked: a misspelt key is an error that names it.

name: shop
task: classification        # classification | regression
target: returned            # "Yes" / "No"
time_column: ordered_at     # the newest orders become the holdout
id_column: order_id

# Where raw files land. Files are read, never changed; each is taken once by content hash.
# The first source is the primary one (one row per order); the others join onto it.
sources:
  - name: orders
    path: data/raw/orders/*.csv
    format: csv
    csv: {separator: ",", encoding: utf-8, null_values: ["", "NA", "NULL"]}
  - name: customers         # every customers file so far counts; the latest row per id wins
    path: data/raw/customers/*.csv
    format: csv
    csv: {separator: ",", encoding: utf-8, null_values: ["", "NA", "NULL"]}
    join: {"on": [customer_id], how: left}   # quoted for YAML 1.1 readers

# The column contract, checked on the joined rows after trimming and imputing. A row that
# breaks a rule goes to data/quarantine/<batch>/ with the rule, column and value.
contract:
  extra_columns: reject     # a file with unknown columns is quarantined whole
  columns:
    # orders
    order_id: {dtype: int, nullable: false, min: 1}
    customer_id: {dtype: int, nullable: false, min: 1}
    ordered_at: {dtype: datetime, nullable: false, format: "%Y-%m-%d %H:%M:%S"}
    # a negative amount (a refund booked as an order) or an empty one is quarantined
    amount: {dtype: float, nullable: false, min: 0}
    items: {dtype: int, nullable: false, min: 1, max: 100}
    # an empty discount means none: filled with 0 (cleaning.impute) before this check
    discount: {dtype: float, nullable: false, min: 0, max: 0.9}
    # " web" is trimmed first; labels such as 'marketplace' are quarantined
    channel: {dtype: str, nullable: false, allowed: [web, app, store, phone]}
    # empty for store and phone orders
    device: {dtype: str, nullable: true, allowed: [desktop, mobile, tablet]}
    returned: {dtype: str, nullable: false, allowed: ["Yes", "No"]}
    # customers
    segment: {dtype: str, nullable: false, allowed: [standard, plus, business]}
    region: {dtype: str, nullable: true, allowed: [north, south, east, west]}
    # typos such as 999 are quarantined; an empty age is filled with the batch median
    age: {dtype: int, nullable: false, min: 18, max: 100}
    signup_date: {dtype: date, nullable: false, format: "%Y-%m-%d"}

cleaning:
  trim_strings: true               # " web" -> "web" before any rule is checked
  deduplicate: {enabled: true}     # an order sent twice is set aside once and counted
  impute:
    discount: {strategy: constant, value: 0.0}
    age: {strategy: median}        # the batch's median age

features:
  datetime_parts: {ordered_at: [month, weekday, hour]}
  ratios: [{name: amount_per_item, numerator: amount, denominator: items}]
  logs: [amount]                   # log1p_amount
  buckets: [{column: age, edges: [25, 35, 50, 65], name: age_band}]
  exclude: [order_id, customer_id] # ids say nothing about returns
  function: null                   # or 'module:function' in this folder

quarantine:
  max_bad_share: 0.1   # about 2% of rows are bad on purpose; more than 10% fails the batch

ingest:
  settle_seconds: 0    # the example writes each file under a temporary name and renames it

# Training on every batch so far: the newest 20% by ordered_at is the holdout.
model:
  estimator: hist_gradient_boosting   # | logistic_regression | random_forest
  metric: roc_auc
  seed: 0
  holdout: {fraction: 0.2}

# A challenger becomes champion only if it beats the champion on the same newest holdout.
promotion:
  min_improvement: 0.002
  must_beat_baseline: true
"""
