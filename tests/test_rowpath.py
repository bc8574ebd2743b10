"""The row-wise scoring path (serving/rowpath.py) against the Polars path it short-cuts.

Whatever the row path accepts, the Polars path accepts too, with no refusal and no remark,
the same typed values and the same predictions; whatever it declines goes to the Polars path
unchanged. Hypothesis draws records over every contract type, nulls, null markers, numbers
written many ways, categories in and out of the allowed lists, broken dates and stray text.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.core.spec import parse_spec, read_yaml
from driftloop.serving.model import ServedModel
from driftloop.serving.rowpath import ROW_LIMIT, row_path
from driftloop.train.fit import fit

from .helpers import write_bare_package

SPEC = """
name: rows
task: classification
target: y
sources: [{name: s, path: data/raw/s/*.csv, csv: {null_values: ["", "NA", "?"]}}]
cleaning: {impute: {filled: {strategy: constant, value: 7}, mean_filled: {strategy: mean}}}
contract:
  columns:
    when: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    day: {dtype: date, format: "%d/%m/%Y"}
    amount: {dtype: float, min: -50, max: 1000}
    count: {dtype: int, min: 0}
    filled: {dtype: int, nullable: false}
    mean_filled: {dtype: float, nullable: false}
    ratio_den: {dtype: float, plausible: {min: -100, max: 100}}
    flag: {dtype: bool}
    channel: {dtype: str, allowed: [web, app, store]}
    segment: {dtype: str, allowed: [A, B], new_values: report}
    city: {dtype: str}
    code: {dtype: str, regex: '[A-Z]{2}-\\d{3}'}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
features:
  datetime_parts: {when: [year, month, weekday, hour, dayofyear, quarter], day: [day]}
  ratios: [{name: per_count, numerator: amount, denominator: ratio_den}]
  logs: [count]
  buckets: [{column: amount, edges: [0, 10, 100], name: amount_band}]
  exclude: [day]
model: {estimator: hist_gradient_boosting, split: random, params: {max_iter: 30}}
"""
CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Accra"]


def _frame(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.uniform(-50, 1000, n).round(3)
    count = rng.integers(0, 40, n)
    den = rng.normal(0, 30, n).round(2)
    signal = amount / 500 - count / 20 + (den > 0) + rng.normal(size=n)
    start = np.datetime64("2024-01-01T00:00:00")
    return pl.DataFrame(
        {
            "when": (start + rng.integers(0, 86_400 * 365, n).astype("timedelta64[s]")).astype(
                "datetime64[us]"
            ),
            "day": (np.datetime64("2024-01-01") + rng.integers(0, 365, n)).astype("datetime64[D]"),
            "amount": [None if rng.random() < 0.05 else float(a) for a in amount],
            "count": count,
            "filled": rng.integers(0, 9, n),
            "mean_filled": rng.normal(size=n),
            "ratio_den": den,
            "flag": rng.random(n) < 0.5,
            "channel": rng.choice(["web", "app", "store"], n),
            "segment": rng.choice(["A", "B"], n),
            "city": [None if rng.random() < 0.1 else str(c) for c in rng.choice(CITIES, n)],
            "code": [
                f"{a}{b}-{k:03d}"
                for a, b, k in zip(
                    *rng.choice(list("ABC"), (2, n)), rng.integers(0, 999, n), strict=True
                )
            ],
            "y": np.where(signal > 0.5, "yes", "no"),
        }
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    from driftloop.features.compute import build_features

    spec = parse_spec(read_yaml(SPEC))
    frame = build_features(_frame(800, 1).lazy(), spec).collect()
    trained = fit(frame, spec)
    folder = tmp_path_factory.mktemp("rowpath") / "pkg"
    write_bare_package(folder, spec, trained)
    served = ServedModel.load("rows", "1", folder, unknown_category="reject")
    assert served.rows is not None, served.info["inference"]
    return served


def _texts(model: ServedModel, frame: pl.DataFrame) -> list[dict[str, str | None]]:
    from driftloop.serving.records import request_records

    return model.contract.records(request_records(frame, model.predictor.spec))


def _same(model: ServedModel, records: list[dict[str, str | None]]) -> bool:
    """True when the row path took the batch (and agreed with Polars); False: it declined."""
    fast = model.score(records)
    slow = model.score_frames(records)
    if fast.checked.features is not None:  # declined: score() took the Polars path itself
        return False
    assert slow.checked.problems == {}, (records, slow.checked.problems)
    assert slow.checked.flags == {}, (records, slow.checked.flags)
    assert fast.accepted == slow.accepted == list(range(len(records)))
    assert list(fast.labels) == list(slow.labels)
    np.testing.assert_allclose(fast.proba, slow.proba, rtol=0, atol=1e-12)
    assert fast.checked.typed.to_dicts() == slow.checked.typed.to_dicts()
    assert fast.checked.typed.schema == slow.checked.typed.schema
    return True


def test_real_records_take_the_row_path_and_agree(model: ServedModel) -> None:
    texts = _texts(model, _frame(300, 2))
    taken = sum(_same(model, [t]) for t in texts)
    # every generated record is clean except a null 'amount' (allowed) : all are taken
    assert taken == len(texts)
    for start in range(0, 64, ROW_LIMIT):
        assert _same(model, texts[start : start + ROW_LIMIT])
    assert model.info["inference"]["row_path"].startswith("row-wise")


def _numberish() -> st.SearchStrategy[str]:
    digits = st.from_regex(r"\A-?\d{0,4}(\.\d{0,4})?([eE][+-]?\d{1,3})?\Z")
    spaced = st.sampled_from([" 1", "1 ", "+1", "1_0", "0x1", "1e", ".", "-", "inf", "NaN"])
    return st.one_of(digits, spaced, st.integers(-100, 2000).map(str))


def _datetimeish(fmt: str) -> st.SearchStrategy[str]:
    moments = st.datetimes(
        min_value=__import__("datetime").datetime(1900, 1, 1),
        max_value=__import__("datetime").datetime(2200, 1, 1),
    )
    loose = st.from_regex(r"\A\d{1,4}[-/]\d{1,2}[-/]\d{1,4}( \d{1,2}:\d{1,2}:\d{1,2})?\Z")
    return st.one_of(moments.map(lambda m: m.strftime(fmt)), loose)


def _value(column: str) -> st.SearchStrategy[str | None]:
    markers = st.sampled_from(["", "NA", "?", None])
    typical: dict[str, st.SearchStrategy[str]] = {
        "when": _datetimeish("%Y-%m-%d %H:%M:%S"),
        "day": _datetimeish("%d/%m/%Y"),
        "amount": _numberish(),
        "count": _numberish(),
        "filled": _numberish(),
        "mean_filled": _numberish(),
        "ratio_den": _numberish(),
        "flag": st.sampled_from(["true", "False", "YES", "n", "1", "0", "t", "maybe", "İ"]),
        "channel": st.sampled_from(["web", "app", "store", "Web", " web", "shop"]),
        "segment": st.sampled_from(["A", "B", "C", "a"]),
        "city": st.one_of(st.sampled_from(CITIES), st.text(max_size=6)),
        "code": st.one_of(
            st.from_regex(r"\A[A-Z]{2}-\d{3}\Z"),
            st.from_regex(r"\A[A-Za-z]{1,3}-\d{2,4}.?\Z"),
            st.sampled_from(["AB-123\n", "AB-١٢٣", "ab-123", " AB-123"]),
        ),
    }
    return st.one_of(typical[column], typical[column], markers, st.text(max_size=5))


@st.composite
def _record(draw: st.DrawFn) -> dict[str, str | None]:
    columns = ["when", "day", "amount", "count", "filled", "mean_filled", "ratio_den"]
    columns += ["flag", "channel", "segment", "city", "code"]
    return {c: draw(_value(c)) for c in columns}


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_record(), min_size=1, max_size=3))
def test_whatever_the_row_path_takes_the_polars_path_takes_alike(
    model: ServedModel, records: list[dict[str, str | None]]
) -> None:
    _same(model, records)


def test_what_has_no_row_path_says_why(model: ServedModel) -> None:
    contract = model.contract
    assert row_path(contract, None, None)[0] is None
    assert "user feature function" in row_path(contract, model.engine, lambda f: f)[1]


def test_a_declined_record_is_refused_as_before(model: ServedModel) -> None:
    record = _texts(model, _frame(1, 3))[0]
    record["channel"] = "shop"
    scored = model.score([record])
    assert scored.checked.features is not None  # the Polars path answered
    assert scored.accepted == []
    [problem] = scored.problems(0)
    assert problem.loc == ("body", 0, "channel") and "isin" in problem.type
    record["channel"], record["segment"] = "web", "C"
    flagged = model.score([record])
    assert flagged.accepted == [0] and "new value" in flagged.checked.flags[0][0]


def test_row_path_values_match_polars_float_parsing() -> None:
    """The grammar the row path parses: Polars reads each of these texts as Python does."""
    from driftloop.serving.rowpath import Declined, _parse_float, _parse_int

    texts = ["0", "-0", "12", "12.", ".5", "-.5", "1e5", "1E-5", "123456789012345.123456789"]
    texts += ["1.0000000000000002", "9" * 15, "0.1e-99"]
    got = pl.Series(texts).cast(pl.Float64, strict=False).to_list()
    for text, want in zip(texts, got, strict=True):
        try:
            value = _parse_float(text)
        except Declined:
            continue
        assert value == want and math.copysign(1, value) == math.copysign(1, want), text
    ints = ["0", "-3", "12.0", "12.", "007", "12.00"]
    want_ints = pl.DataFrame({"x": ints}).select(
        __import__("driftloop.prep.rules", fromlist=["parsed"]).parsed(
            "x", parse_spec(read_yaml(SPEC)).contract.columns["count"]
        )
    )
    assert [_parse_int(t) for t in ints] == want_ints.get_column("x").to_list()
