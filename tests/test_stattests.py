"""Each drift test against its definition (scipy, numpy), as Evidently computes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial import distance

from driftloop.monitoring.current import categorical_data, numeric_data
from driftloop.monitoring.stattests import NumericData, get_test, registry, select_test
from driftloop.monitoring.stattests._bins import sturges_edges
from driftloop.monitoring.stattests.wasserstein import wasserstein_sorted


def num(values: Any) -> NumericData:
    return numeric_data(pl.Series("x", np.asarray(values, dtype=np.float64)))


def cat(values: list[str]) -> Any:
    return categorical_data(pl.Series("x", values))


def evidently_binned(ref: np.ndarray, cur: np.ndarray, feel_zeroes: bool) -> tuple[Any, Any]:
    """Evidently's get_binned_data for a numeric column, written out with numpy."""
    if len(np.unique(ref)) > 20:
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
        r = np.histogram(ref, bins)[0] / len(ref)
        c = np.histogram(cur, bins)[0] / len(cur)
    else:
        keys = sorted(set(ref) | set(cur))
        r = np.array([np.sum(ref == k) for k in keys]) / len(ref)
        c = np.array([np.sum(cur == k) for k in keys]) / len(cur)
    if feel_zeroes:
        for p in (r, c):
            smallest = p[p != 0].min()
            p[p == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return r, c


def test_the_registry_holds_the_documented_tests() -> None:
    assert set(registry()) == {"ks", "wasserstein", "psi", "jensenshannon", "chisquare", "z"}
    for test in registry().values():
        assert test.doc.strip(), f"{test.name} has no docstring saying when it applies"
        assert test.kinds <= {"numeric", "categorical"}


@pytest.mark.parametrize(("n", "m"), [(1, 1), (5, 3), (1000, 1000), (1000, 777), (3, 2000)])
def test_wasserstein_matches_scipy(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 7 + m)
    r = np.sort(rng.normal(size=n))
    c = np.sort(np.round(rng.normal(0.3, 2.0, size=m), 1))  # ties too
    assert wasserstein_sorted(r, c) == pytest.approx(stats.wasserstein_distance(r, c), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
)
def test_wasserstein_matches_scipy_on_any_small_sample(a: list[int], b: list[int]) -> None:
    r, c = np.sort(np.array(a, float)), np.sort(np.array(b, float))
    assert wasserstein_sorted(r, c) == pytest.approx(
        stats.wasserstein_distance(r, c), rel=1e-12, abs=1e-12
    )


def test_each_numeric_test_equals_its_definition() -> None:
    rng = np.random.default_rng(0)
    ref = rng.lognormal(size=3000)
    cur = rng.lognormal(0.2, 1.1, size=2000)
    r, c = num(ref), num(cur)
    w = get_test("wasserstein").compute(r, c)
    assert w.value == pytest.approx(
        stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001), rel=1e-12
    )
    ks = get_test("ks").compute(r, c)
    expected = stats.ks_2samp(ref, cur)
    assert ks.value == pytest.approx(expected.pvalue, rel=1e-12)
    assert ks.effect == pytest.approx(expected.statistic, rel=1e-12)
    p, q = evidently_binned(ref, cur, feel_zeroes=True)
    assert get_test("psi").compute(r, c).value == pytest.approx(
        np.sum((p - q) * np.log(p / q)), rel=1e-12
    )
    p, q = evidently_binned(ref, cur, feel_zeroes=False)
    assert get_test("jensenshannon").compute(r, c).value == pytest.approx(
        distance.jensenshannon(p, q), rel=1e-12
    )


def test_sturges_edges_are_numpys() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=999), rng.normal(2, 1, size=37)
    np.testing.assert_array_equal(
        sturges_edges(num(ref), num(cur)),
        np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges"),
    )


def test_categorical_tests_equal_their_definitions() -> None:
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 20 + ["b"] * 40 + ["c"] * 35 + ["d"] * 5
    r, c = cat(ref), cat(cur)
    keys = ["a", "b", "c", "d"]
    rc = np.array([ref.count(k) for k in keys], float)
    cc = np.array([cur.count(k) for k in keys], float)
    with np.errstate(divide="ignore"):
        expected_p = stats.chisquare(cc, rc * len(cur) / len(ref)).pvalue
    assert get_test("chisquare").compute(r, c).value == pytest.approx(expected_p, abs=1e-300)
    assert get_test("jensenshannon").compute(r, c).value == pytest.approx(
        distance.jensenshannon(rc / rc.sum(), cc / cc.sum()), rel=1e-12
    )
    table = np.array([rc, cc])
    v = np.sqrt(stats.chi2_contingency(table, correction=False)[0] / table.sum())
    assert get_test("chisquare").compute(r, c).effect == pytest.approx(v, rel=1e-12)


def test_z_test_is_the_two_proportion_test() -> None:
    ref = ["no"] * 70 + ["yes"] * 30
    cur = ["no"] * 50 + ["yes"] * 50
    p1, p2 = 0.3, 0.5  # share of values other than the first sorted value ("no")
    pooled = (30 + 50) / 200
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))
    result = get_test("z").compute(cat(ref), cat(cur))
    assert result.value == pytest.approx(2 * (1 - stats.norm.cdf(abs(z))), rel=1e-12)
    assert get_test("z").compute(cat(["a"] * 5), cat(["a"] * 9)).value == 1.0


@pytest.mark.parametrize(
    ("ref", "cur", "expected"),
    [
        (np.arange(1000.0), np.arange(50.0), "ks"),
        (np.arange(1001.0), np.arange(50.0), "wasserstein"),
        (np.arange(1000.0) % 4, np.arange(50.0) % 4, "chisquare"),
        (np.arange(1000.0) % 2, np.arange(50.0) % 2, "z"),
        (np.arange(5000.0) % 5, np.arange(50.0) % 5, "jensenshannon"),
        (np.arange(5000.0) % 5, np.arange(50.0) % 7, "wasserstein"),
    ],
)
def test_automatic_choice_is_evidentlys(ref: Any, cur: Any, expected: str) -> None:
    assert select_test(num(ref), num(cur)).name == expected


def test_categorical_choice_by_size_and_values() -> None:
    assert select_test(cat(["a", "b", "c"] * 300), cat(["a"])).name == "chisquare"
    assert select_test(cat(["a", "b"] * 500), cat(["a"])).name == "z"
    assert select_test(cat(["a", "b"] * 501), cat(["a"])).name == "jensenshannon"


def test_missing_values_are_counted_not_tested() -> None:
    data = numeric_data(pl.Series("x", [1.0, None, float("nan"), float("inf"), 2.0]))
    assert data.count == 2 and data.missing == 3
