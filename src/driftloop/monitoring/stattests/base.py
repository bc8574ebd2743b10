"""What every drift test shares: the column data it reads, its result, and the registry.

A column reaches a test already reduced to what the statistics need, so the data is read
once per column however many tests run on it:

- :class:`NumericData`: the present values sorted ascending (NaN and +-inf are missing, as
  Evidently drops them), and the number of missing values.
- :class:`CategoricalData`: each category (as text) with its count, and the missing count.

A test returns a :class:`TestResult`: its ``value`` as Evidently defines it (a p-value or a
distance), an ``effect`` size on a scale where larger means more drift, and the data
binned so that the decision (:mod:`driftloop.monitoring.decision`) can draw the effect's
distribution under "no drift" by permutation. ``effect_of_counts`` computes the effect from
binned counts, vectorized over many draws (one draw per row of the count matrices).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

Kind = Literal["numeric", "categorical"]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class NumericData:
    """Present values of a numeric column, sorted ascending, and how many were missing."""

    sorted_values: FloatArray
    missing: int = 0
    distinct: int | None = None  # computed on demand when None
    scale: float = 1.0  # the values are the column's times this power of two (common_scale)

    @property
    def count(self) -> int:
        return int(self.sorted_values.shape[0])

    def distinct_count(self) -> int:
        if self.distinct is not None:
            return self.distinct
        v = self.sorted_values
        return 0 if v.size == 0 else int(np.count_nonzero(v[1:] != v[:-1])) + 1

    def distinct_values(self, limit: int) -> FloatArray | None:
        """The distinct values when there are at most ``limit`` of them, else None."""
        if self.distinct_count() > limit:
            return None
        return np.unique(self.sorted_values)


@dataclass(frozen=True)
class CategoricalData:
    """Categories (text) and their counts; categories with a zero count may be absent."""

    categories: np.ndarray[Any, np.dtype[Any]]
    counts: IntArray
    missing: int = 0

    @property
    def count(self) -> int:
        return int(self.counts.sum())


ColumnData = NumericData | CategoricalData


@dataclass(frozen=True)
class Binned:
    """Reference and current counts over shared bins, and the effect as a function of them.

    ``effect_of_counts(ref, cur)`` takes (draws, bins) count matrices and returns one effect
    per draw. ``exact`` is True when the effect computed from the bins is the effect itself
    (categories, PSI and Jensen-Shannon bins); False when the bins approximate it
    (Kolmogorov-Smirnov and Wasserstein on quantile bins).
    """

    reference: IntArray
    current: IntArray
    effect_of_counts: Callable[[IntArray, IntArray], FloatArray]
    exact: bool


@dataclass(frozen=True)
class TestResult:
    value: float  # the statistic as Evidently reports it (p-value or distance)
    effect: float  # larger = more drift
    binned: Binned
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatTest:
    """One registered test: its name (as Evidently names it), when it applies, its defaults.

    ``returns`` says how ``value`` reads: a ``p_value`` drifts below ``threshold``, a
    ``distance`` at or above it (Evidently's fixed-threshold rule). ``effect_threshold`` is
    the smallest effect the sample-size-aware decision calls drift.
    """

    name: str
    display_name: str
    kinds: frozenset[Kind]
    returns: Literal["p_value", "distance"]
    default_threshold: float
    effect_name: str
    default_effect_threshold: float
    compute: Callable[[Any, Any], TestResult]
    doc: str = ""

    def fixed_threshold_drift(self, value: float, threshold: float) -> bool:
        """Evidently's rule: a p-value below the threshold, a distance at or above it."""
        if not np.isfinite(value):
            return self.returns == "distance" and value == np.inf
        return value < threshold if self.returns == "p_value" else value >= threshold


_REGISTRY: dict[str, StatTest] = {}


def register(test: StatTest) -> StatTest:
    if test.name in _REGISTRY:
        raise ValueError(f"a drift test named {test.name!r} is already registered")
    _REGISTRY[test.name] = test
    return test


def registry() -> dict[str, StatTest]:
    """Every registered test by name (importing the package registers the built-ins)."""
    return dict(_REGISTRY)


def get_test(name: str) -> StatTest:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown drift test {name!r}; known tests: {sorted(_REGISTRY)}") from None


# ---- shared helpers ----------------------------------------------------------------------

SAFE_EXPONENT = 900  # magnitudes up to 2^900: sums over 2^40 values and ranges stay finite


def common_scale(ref: NumericData, cur: NumericData) -> tuple[NumericData, NumericData]:
    """Both samples times one power of two that brings the largest magnitude to at most
    2^900, when it is above that; else both unchanged.

    A contract-valid float can be as large as 1.8e308: a sum of two of them or the range
    from -1e308 to 1e308 overflows, and a test would read inf or NaN (or crash converting a
    bin count). Every test here is scale-free (p-values, shares over bins whose edges scale
    with the data, a distance normed by the reference's spread), and a power of two scales
    exactly, so the tests run on the scaled values (at most 2^-124: nothing underflows that
    matters). ``scale`` records the factor for what is reported in the column's units (a
    spread, plot edges). Squares are not safe at any one scale (1 and 1e308 in one column):
    a spread is computed on values normed by their own largest magnitude (wasserstein.py).
    """
    ends = [abs(float(d.sorted_values[i])) for d in (ref, cur) if d.count for i in (0, -1)]
    largest = max(ends, default=0.0)
    if largest <= 2.0**SAFE_EXPONENT:
        return ref, cur
    factor = math.ldexp(1.0, SAFE_EXPONENT - math.frexp(largest)[1])
    return (
        replace(ref, sorted_values=ref.sorted_values * factor, scale=ref.scale * factor),
        replace(cur, sorted_values=cur.sorted_values * factor, scale=cur.scale * factor),
    )


def aligned_counts(ref: CategoricalData, cur: CategoricalData) -> tuple[IntArray, IntArray, Any]:
    """Counts of both sides over the union of their categories (reference order first)."""
    keys = list(dict.fromkeys([*ref.categories.tolist(), *cur.categories.tolist()]))
    index = {k: i for i, k in enumerate(keys)}
    r = np.zeros(len(keys), dtype=np.int64)
    c = np.zeros(len(keys), dtype=np.int64)
    for k, n in zip(ref.categories.tolist(), ref.counts.tolist(), strict=True):
        r[index[k]] += n
    for k, n in zip(cur.categories.tolist(), cur.counts.tolist(), strict=True):
        c[index[k]] += n
    return r, c, np.array(keys, dtype=object)


def numeric_as_categories(data: NumericData) -> CategoricalData:
    """A numeric column with few distinct values, counted per value (as Evidently does)."""
    values, counts = np.unique(data.sorted_values, return_counts=True)
    return CategoricalData(values.astype(object), counts.astype(np.int64), data.missing)


def histogram_counts(sorted_values: FloatArray, edges: FloatArray) -> IntArray:
    """``numpy.histogram`` counts of already sorted values: bins [e_i, e_i+1), last closed."""
    inner = np.searchsorted(sorted_values, edges[:-1], side="left")
    end = np.searchsorted(sorted_values, edges[-1], side="right")
    bounds = np.append(inner, end)
    return np.diff(bounds).astype(np.int64)


def cramers_v(ref: IntArray, cur: IntArray) -> FloatArray:
    """Cramer's V of the 2 x K table (sample x category), per row; 0 where undefined.

    With two samples V = sqrt(chi2 / N), the chi-square of independence over N values.
    """
    ref = np.atleast_2d(ref).astype(np.float64)
    cur = np.atleast_2d(cur).astype(np.float64)
    n_r = ref.sum(axis=1, keepdims=True)
    n_c = cur.sum(axis=1, keepdims=True)
    total = n_r + n_c
    pooled = (ref + cur) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        e_r = pooled * n_r
        e_c = pooled * n_c
        chi = np.where(e_r > 0, (ref - e_r) ** 2 / e_r, 0.0) + np.where(
            e_c > 0, (cur - e_c) ** 2 / e_c, 0.0
        )
        v = np.sqrt(chi.sum(axis=1) / total[:, 0])
    return np.asarray(np.nan_to_num(v, nan=0.0), dtype=np.float64)
