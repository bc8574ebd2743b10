"""The reference profile stored with every model: statistics checked against numpy."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.models.profile import (
    OTHER_CATEGORIES_KEY,
    QUANTILE_LEVELS,
    SCHEMA_VERSION,
    TOP_CATEGORIES,
    profile_from_json,
    profile_to_json,
    reference_profile,
)


def profile_of(
    features: pl.DataFrame,
    *,
    predictions: pl.Series | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    return reference_profile(
        features,
        holdout_predictions=pl.Series([0.2, 0.7]) if predictions is None else predictions,
        holdout_metric={"roc_auc": 0.81},
        seed=seed,
        **options,
    )


def mixed_frame(rows: int = 1_000) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    return pl.DataFrame(
        {
            "id": np.arange(rows),
            "amount": rng.lognormal(size=rows),
            "city": rng.choice(["Lyon", "Oslo", "Lima"], size=rows),
            "member": rng.random(rows) < 0.4,
            "day": [
                dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 99, rows)
            ],
        }
    )


def test_the_profile_has_the_documented_top_level_keys() -> None:
    profile = profile_of(mixed_frame())

    assert profile["schema_version"] == SCHEMA_VERSION == 1
    assert set(profile) == {
        "schema_version",
        "row_count",
        "column_order",
        "columns",
        "predictions",
        "holdout_metric",
        "sample",
        "settings",
    }
    assert profile["row_count"] == 1_000
    assert profile["column_order"] == ["id", "amount", "city", "member", "day"]
    assert profile["holdout_metric"] == {"roc_auc": 0.81}
    kinds = {name: column["kind"] for name, column in profile["columns"].items()}
    assert kinds == {
        "id": "numeric",
        "amount": "numeric",
        "city": "categorical",
        "member": "categorical",
        "day": "numeric",
    }


def test_numeric_statistics_match_numpy() -> None:
    rng = np.random.default_rng(11)
    values = {"normal": rng.normal(5, 2, 10_001), "counts": rng.poisson(3, 10_001)}

    profile = profile_of(pl.DataFrame(values))

    for name, data in values.items():
        column = profile["columns"][name]
        assert column["count"] == data.size and column["null_count"] == 0
        assert column["mean"] == pytest.approx(data.mean(), rel=1e-12)
        assert column["std"] == pytest.approx(data.std(ddof=1), rel=1e-12)
        assert (column["min"], column["max"]) == (data.min(), data.max())
        assert list(column["quantiles"]) == [f"{q:g}" for q in QUANTILE_LEVELS]
        np.testing.assert_allclose(
            list(column["quantiles"].values()), np.quantile(data, QUANTILE_LEVELS), rtol=1e-12
        )


@pytest.mark.parametrize("bins", [1, 4, 20, 37])
@pytest.mark.parametrize("distribution", ["normal", "poisson", "exponential"])
def test_histogram_matches_numpy_on_equal_frequency_edges(bins: int, distribution: str) -> None:
    rng = np.random.default_rng(bins)
    data = {
        "normal": rng.normal(size=5_000),
        # heavy ties: most quantile edges repeat and must be dropped
        "poisson": rng.poisson(0.7, size=5_000).astype(float),
        "exponential": rng.exponential(size=5_000),
    }[distribution]

    histogram = profile_of(pl.DataFrame({"x": data}), bins=bins)["columns"]["x"]["histogram"]

    expected_edges = np.unique(np.quantile(data, [i / bins for i in range(bins + 1)]))
    np.testing.assert_allclose(histogram["edges"], expected_edges, rtol=1e-12)
    assert histogram["counts"] == np.histogram(data, bins=histogram["edges"])[0].tolist()
    assert sum(histogram["counts"]) == data.size
    assert len(histogram["counts"]) == len(histogram["edges"]) - 1 <= bins
    if distribution != "poisson":  # continuous data: every bin holds about size / bins
        assert max(histogram["counts"]) - min(histogram["counts"]) <= 2


def test_the_documented_recipe_bins_data_as_the_reference_counts_do() -> None:
    data = np.random.default_rng(5).gamma(2.0, size=3_000)
    histogram = profile_of(pl.DataFrame({"x": data}))["columns"]["x"]["histogram"]

    index = np.searchsorted(histogram["edges"][1:-1], data, side="right")

    assert np.bincount(index, minlength=len(histogram["counts"])).tolist() == histogram["counts"]


def test_nulls_and_non_finite_floats_are_counted_as_missing() -> None:
    features = pl.DataFrame(
        {
            "x": [1.0, None, float("nan"), 4.0, float("inf"), -float("inf"), 7.0],
            "city": ["a", None, "b", "a", None, "a", "c"],
        }
    )

    columns = profile_of(features)["columns"]

    assert (columns["x"]["count"], columns["x"]["null_count"]) == (3, 4)
    assert (columns["x"]["mean"], columns["x"]["max"]) == (4.0, 7.0)
    assert sum(columns["x"]["histogram"]["counts"]) == 3
    assert (columns["city"]["count"], columns["city"]["null_count"]) == (5, 2)
    assert columns["city"]["categories"] == ["a", "b", "c"]
    assert columns["city"]["counts"] == [3, 1, 1]
    assert columns["city"]["distinct_count"] == 3


def test_categories_beyond_the_top_hundred_are_summed_as_other() -> None:
    # category k appears k + 1 times, so the 100 most frequent are k = 149 .. 50
    values = [f"c{k:03d}" for k in range(150) for _ in range(k + 1)]
    features = pl.DataFrame({"code": [*values, None, None]}).sample(fraction=1.0, seed=1)

    column = profile_of(features)["columns"]["code"]

    assert len(column["categories"]) == TOP_CATEGORIES == 100
    assert column["categories"][:3] == ["c149", "c148", "c147"]
    assert column["counts"] == list(range(150, 50, -1))
    assert column[OTHER_CATEGORIES_KEY] == sum(range(1, 51))
    assert sum(column["counts"]) + column[OTHER_CATEGORIES_KEY] == column["count"] == len(values)
    assert (column["null_count"], column["distinct_count"]) == (2, 150)


def test_equal_counts_are_ordered_by_value_and_booleans_are_strings() -> None:
    features = pl.DataFrame(
        {"tag": ["z", "y", "x", "y", "z", "x"], "flag": [True, False, None, True, True, False]}
    )

    columns = profile_of(features)["columns"]

    assert columns["tag"]["categories"] == ["x", "y", "z"]
    assert (columns["flag"]["categories"], columns["flag"]["counts"]) == (["true", "false"], [3, 2])
    assert columns["flag"]["null_count"] == 1


def test_dates_and_datetimes_are_numeric_epoch_seconds_and_iso_in_the_sample() -> None:
    days = [dt.date(2024, 3, 1), dt.date(1969, 12, 31), None, dt.date(2024, 3, 3)]
    paris = dt.timezone(dt.timedelta(hours=1))
    stamps = [
        dt.datetime(2024, 3, 1, 12, 30, 15, 250_000, tzinfo=paris),
        None,
        dt.datetime(1970, 1, 1, 1, 0, 1, tzinfo=paris),
        dt.datetime(2024, 3, 2, tzinfo=paris),
    ]
    features = pl.DataFrame({"day": days, "at": stamps})

    profile = profile_of(features)

    day, at = profile["columns"]["day"], profile["columns"]["at"]
    assert (day["kind"], day["count"], day["null_count"]) == ("numeric", 3, 1)
    assert day["min"] == -86_400.0
    assert day["max"] == dt.datetime(2024, 3, 3, tzinfo=dt.UTC).timestamp()
    assert (at["kind"], at["count"]) == ("numeric", 3)
    assert at["min"] == 1.0
    assert at["max"] == stamps[3].timestamp()  # type: ignore[union-attr]
    assert at["quantiles"]["0.5"] == stamps[0].timestamp()  # type: ignore[union-attr]
    sample = profile["sample"]["columns"]
    assert sample["day"] == ["2024-03-01", "1969-12-31", None, "2024-03-03"]
    parsed = [None if s is None else dt.datetime.fromisoformat(s) for s in sample["at"]]
    assert parsed == stamps


def test_the_sample_is_bounded_seeded_and_made_of_whole_rows() -> None:
    features = pl.DataFrame({"id": range(1_000)}).with_columns(twice=pl.col("id") * 2)

    first = profile_of(features, seed=1, sample_rows=50)["sample"]
    again = profile_of(features, seed=1, sample_rows=50)["sample"]
    other = profile_of(features, seed=2, sample_rows=50)["sample"]

    ids = first["columns"]["id"]
    assert first["row_count"] == len(ids) == 50
    assert ids == sorted(set(ids))
    assert first["columns"]["twice"] == [2 * i for i in ids]
    assert again == first
    assert other["columns"]["id"] != ids


def test_the_sample_holds_every_row_when_the_frame_is_small() -> None:
    features = pl.DataFrame({"id": [3, 1, 2]})

    sample = profile_of(features, sample_rows=5_000)["sample"]

    assert sample["row_count"] == 3 and sample["columns"]["id"] == [3, 1, 2]
    assert profile_of(features, sample_rows=0)["sample"]["columns"] == {"id": []}


def test_the_json_round_trip_is_exact_strict_and_stable() -> None:
    features = mixed_frame().with_columns(
        pl.when(pl.col("id") % 7 == 0).then(None).otherwise(pl.col("amount")).alias("amount")
    )
    profile = profile_of(features, predictions=pl.Series(["yes", "no", "yes", None]))

    text = profile_to_json(profile)

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    assert json.loads(text, parse_constant=no_constants) == profile
    assert profile_from_json(text) == profile
    assert profile_to_json(profile_from_json(text)) == text
    assert (
        profile_to_json(profile_of(features, predictions=pl.Series(["yes", "no", "yes", None])))
        == text
    )


def test_a_non_finite_metric_is_stored_as_null() -> None:
    profile = reference_profile(
        pl.DataFrame({"x": [1.0, 2.0]}),
        holdout_predictions=pl.Series([0.5, 0.5]),
        holdout_metric={"roc_auc": float("nan"), "brier": 0.25},
        seed=0,
    )

    assert profile["holdout_metric"] == {"roc_auc": None, "brier": 0.25}
    assert profile_from_json(profile_to_json(profile)) == profile


def test_predictions_are_summarised_like_a_column() -> None:
    features = pl.DataFrame({"x": [1.0, 2.0, 3.0]})

    scores = profile_of(features, predictions=pl.Series("p", [0.1, 0.4, 0.9, None]))
    labels = profile_of(features, predictions=pl.Series(["cat", "dog", "cat"]))

    assert scores["predictions"]["kind"] == "numeric"
    assert (scores["predictions"]["count"], scores["predictions"]["null_count"]) == (3, 1)
    assert scores["predictions"]["quantiles"]["0.5"] == 0.4
    assert labels["predictions"]["kind"] == "categorical"
    assert labels["predictions"]["categories"] == ["cat", "dog"]
    assert labels["predictions"]["counts"] == [2, 1]


@pytest.mark.parametrize("dtype", [pl.Float64, pl.Int32, pl.String, pl.Date, pl.Null])
def test_an_all_null_column_has_count_zero_and_null_statistics(dtype: pl.DataType) -> None:
    features = pl.DataFrame({"empty": pl.Series([None] * 4, dtype=dtype), "x": [1, 2, 3, 4]})

    column = profile_of(features)["columns"]["empty"]

    assert (column["count"], column["null_count"]) == (0, 4)
    if column["kind"] == "numeric":
        for key in ("mean", "std", "min", "max", "quantiles", "histogram"):
            assert column[key] is None, key
    else:
        assert (column["categories"], column["counts"], column[OTHER_CATEGORIES_KEY]) == (
            [],
            [],
            0,
        )
        assert column["distinct_count"] == 0


def test_a_constant_column_has_one_bin_and_a_single_value_has_no_std() -> None:
    columns = profile_of(pl.DataFrame({"c": [2.5] * 9, "one": [None] * 8 + [1.0]}))["columns"]

    assert columns["c"]["histogram"] == {"edges": [2.5, 2.5], "counts": [9]}
    assert columns["c"]["std"] == 0.0
    assert (columns["one"]["count"], columns["one"]["std"]) == (1, None)
    assert columns["one"]["histogram"] == {"edges": [1.0, 1.0], "counts": [1]}


def test_an_empty_frame_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"'features' parameter .* at least one row"):
        profile_of(pl.DataFrame({"x": []}, schema={"x": pl.Float64}))


def test_unsupported_column_types_are_all_named() -> None:
    features = pl.DataFrame({"tags": [["a"], ["b"]], "blob": [b"x", b"y"], "x": [1, 2]})

    with pytest.raises(TypeError, match=r"'tags' \(List\(String\)\), 'blob' \(Binary\)"):
        profile_of(features)


@pytest.mark.parametrize(
    ("option", "value"), [("bins", 0), ("sample_rows", -1), ("seed", -3), ("bins", 2.5)]
)
def test_bad_options_are_refused(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"'{option}' parameter .* Got {value!r} instead"):
        profile_of(pl.DataFrame({"x": [1.0]}), **{option: value})


@pytest.mark.parametrize("text", ['{"schema_version": 2}', "[1, 2]", "{}"])
def test_a_profile_of_another_schema_version_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="schema_version"):
        profile_from_json(text)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.none() | st.floats(width=32) | st.integers(-5, 5).map(float), min_size=1),
    st.integers(1, 12),
)
def test_counts_always_add_up(values: list[float | None], bins: int) -> None:
    column = profile_of(pl.DataFrame({"x": values}, schema={"x": pl.Float64}), bins=bins)[
        "columns"
    ]["x"]

    assert column["count"] + column["null_count"] == len(values)
    if column["count"]:
        edges, counts = column["histogram"]["edges"], column["histogram"]["counts"]
        assert sum(counts) == column["count"]
        assert edges == sorted(edges)
        assert len(set(edges)) == len(edges) or edges == [edges[0]] * 2  # constant: [c, c]
        quantiles = list(column["quantiles"].values())
        assert quantiles == sorted(quantiles)
        assert (quantiles[0], quantiles[-1]) == (column["min"], column["max"])


def test_reference_columns_sort_every_number_and_count_every_category() -> None:
    from driftloop.models.profile import MAX_SORTED_ROWS, reference_columns

    frame = mixed_frame(2_000).with_columns(
        pl.when(pl.col("id") % 10 == 0).then(None).otherwise(pl.col("amount")).alias("amount")
    )
    columns = reference_columns(frame, roles={"member": "target"}, seed=1)
    rows = {r["column"]: r for r in columns.iter_rows(named=True)}
    amount = rows["amount"]
    expected = np.sort(frame["amount"].drop_nulls().to_numpy())
    np.testing.assert_array_equal(np.array(amount["sorted_values"]), expected)
    assert amount["count"] == 1_800 and amount["null_count"] == 200 and not amount["sampled"]
    day = np.array(rows["day"]["sorted_values"])  # dates as epoch seconds, like the summaries
    assert day[0] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
    city = rows["city"]
    assert sum(city["counts"]) == 2_000 and city["other_count"] == 0
    assert city["counts"] == sorted(city["counts"], reverse=True)  # most frequent first
    assert rows["member"]["role"] == "target"
    assert sorted(rows["member"]["categories"]) == ["false", "true"]
    assert MAX_SORTED_ROWS == 1_000_000


def test_reference_columns_sample_beyond_max_rows_and_cap_categories() -> None:
    from driftloop.models.profile import reference_columns

    frame = pl.DataFrame({"x": np.arange(1_000.0), "c": [f"v{i % 50}" for i in range(1_000)]})
    columns = reference_columns(frame, max_rows=100, max_categories=10, seed=3)
    x, c = columns.row(0, named=True), columns.row(1, named=True)
    assert x["sampled"] and len(x["sorted_values"]) == 100 and x["count"] == 1_000
    assert x["sorted_values"] == sorted(x["sorted_values"])
    assert len(c["categories"]) == 10 and c["other_count"] == 800 and c["count"] == 1_000
    with pytest.raises(ValueError, match="'max_rows' parameter"):
        reference_columns(frame, max_rows=0)
