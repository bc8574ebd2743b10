"""Wasserstein distance normed by the reference's standard deviation (``wasserstein``).

Evidently's default for a numeric column with more than 5 distinct values when the
reference has more than 1,000 values. ``value`` is the first Wasserstein (earth mover's)
distance between the two samples divided by ``max(std(reference), 0.001)`` (population
std, ddof=0), as Evidently computes it; drift at or above 0.1 under the fixed rule. It reads
"how far, in reference standard deviations, mass has to move". The effect size is the value.

Computed exactly from the sorted samples in O(n) after the sort (the reference is sorted
once, at training time) as the area between the two quantile functions. It equals
``scipy.stats.wasserstein_distance`` up to floating-point summation order.
"""

from __future__ import annotations

import numpy as np

from driftloop.monitoring.stattests._bins import quantile_bins
from driftloop.monitoring.stattests.base import (
    Binned,
    FloatArray,
    IntArray,
    NumericData,
    StatTest,
    TestResult,
    register,
)


def wasserstein_sorted(r: FloatArray, c: FloatArray) -> float:
    """W1 between two non-empty samples given sorted ascending: the area between their
    quantile functions, with the merge of the two step grids found by integer arithmetic
    (no comparison sort). Samples of equal size reduce to mean(|r - c|)."""
    n, m = r.size, c.size
    if n == m:
        return float(np.mean(np.abs(r - c)))
    total = n + m
    i = np.arange(1, n + 1, dtype=np.int64)
    j = np.arange(1, m + 1, dtype=np.int64)
    # in units of 1/(n*m), reference steps end at i*m and current steps at j*n; the
    # reference's i-th step is preceded by ceil(i*m/n) - 1 current steps (ties: reference first)
    at_ref = i * m
    pos = (at_ref - 1) // n + i - 1
    is_ref = np.zeros(total, dtype=np.bool_)
    is_ref[pos] = True
    ends = np.empty(total, dtype=np.int64)
    ends[pos] = at_ref
    ends[~is_ref] = j * n
    width = np.diff(ends, prepend=0).astype(np.float64)
    a = np.cumsum(is_ref, dtype=np.int64)
    a -= is_ref
    b = np.arange(total, dtype=np.int64) - a
    np.minimum(a, n - 1, out=a)
    np.minimum(b, m - 1, out=b)
    gap = r[a] - c[b]
    np.abs(gap, out=gap)
    return float(np.dot(width, gap)) / (n * m)


def _std(r: FloatArray) -> float:
    return float(np.std(r))


def wasserstein(ref: NumericData, cur: NumericData) -> TestResult:
    norm = max(_std(ref.sorted_values), 0.001)
    value = wasserstein_sorted(ref.sorted_values, cur.sorted_values) / norm
    ref_counts, cur_counts, means = quantile_bins(ref, cur)
    gaps = np.diff(means) / norm

    def of_counts(r: IntArray, c: IntArray) -> FloatArray:
        fr = np.cumsum(r, axis=1)[:, :-1] / r.sum(axis=1, keepdims=True)
        fc = np.cumsum(c, axis=1)[:, :-1] / c.sum(axis=1, keepdims=True)
        return np.asarray(np.abs(fr - fc) @ gaps, dtype=np.float64)

    return TestResult(
        value=value,
        effect=value,
        binned=Binned(ref_counts, cur_counts, of_counts, exact=False),
        details={"reference_std": norm},
    )


WASSERSTEIN = register(
    StatTest(
        name="wasserstein",
        display_name="Wasserstein distance (normed)",
        kinds=frozenset({"numeric"}),
        returns="distance",
        default_threshold=0.1,
        effect_name="normed Wasserstein distance",
        default_effect_threshold=0.1,
        compute=wasserstein,
        doc=__doc__ or "",
    )
)
