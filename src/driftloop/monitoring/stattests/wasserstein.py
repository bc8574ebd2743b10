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

import math

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

CHUNK = 1 << 16  # steps per pass: small buffers stay in cache and are reused
CEILING = 1e300  # the largest normed distance reported


def wasserstein_sorted(r: FloatArray, c: FloatArray) -> float:
    """W1 between two non-empty samples given sorted ascending: the area between their
    quantile functions. Each step of the larger sample's quantile function (width 1/n)
    overlaps at most two steps of the smaller one's (width 1/m >= 1/n), so one vectorized
    pass over the larger sample, in exact integer units of 1/(n*m), adds up the area.
    Samples of equal size reduce to mean(|r - c|)."""
    n, m = r.size, c.size
    if n == m:
        area = sum(float(np.abs(r[lo : lo + CHUNK] - c[lo : lo + CHUNK]).sum())
                   for lo in range(0, n, CHUNK))  # fmt: skip
        return area / n
    if m > n:  # W1 is symmetric: walk the finer grid
        r, c, n, m = c, r, m, n
    total = 0.0
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        start = np.arange(lo, hi, dtype=np.int64) * m  # step i covers [i*m, (i+1)*m)
        j = start // n  # the coarse step holding its start; it ends at (j+1)*n
        first = (np.minimum((j + 1) * n, start + m) - start).astype(np.float64)
        total += float(np.dot(first, np.abs(r[lo:hi] - c[j])))
        np.minimum(j + 1, m - 1, out=j)  # the rest lies in the next coarse step
        total += float(np.dot(m - first, np.abs(r[lo:hi] - c[j])))
    return total / (n * m)


def _std(r: FloatArray) -> float:
    """Population std (ddof=0, as ``numpy.std``), two passes in cache-sized chunks, on the
    values divided by a power of two near their largest magnitude (exact), so the squares
    neither overflow (1e308) nor lose the small values' spread next to a huge one."""
    largest = max(abs(float(r[0])), abs(float(r[-1])))  # sorted: the ends are the extremes
    unit = math.ldexp(1.0, math.frexp(largest)[1]) if largest > 0 else 1.0
    mean = float(np.sum(r / unit)) / r.size
    squares = sum(
        float(np.square(r[lo : lo + CHUNK] / unit - mean).sum()) for lo in range(0, r.size, CHUNK)
    )
    return float(np.sqrt(squares / r.size)) * unit


def _capped(x: FloatArray) -> FloatArray:
    """A normed distance beyond CEILING (1 and 1e308 against a spread of 0.001) is CEILING:
    its permutation null and noise floor stay finite."""
    return np.minimum(np.nan_to_num(x, nan=0.0, posinf=CEILING), CEILING)


def wasserstein(ref: NumericData, cur: NumericData) -> TestResult:
    norm = max(_std(ref.sorted_values), 0.001 * ref.scale)  # the floor in the column's units
    with np.errstate(over="ignore"):
        value = float(
            _capped(np.array([wasserstein_sorted(ref.sorted_values, cur.sorted_values) / norm]))[0]
        )
    ref_counts, cur_counts, means = quantile_bins(ref, cur)
    gaps = np.diff(means)  # normed after the sum: a gap over a tiny spread may overflow

    def of_counts(r: IntArray, c: IntArray) -> FloatArray:
        fr = np.cumsum(r, axis=1)[:, :-1] / r.sum(axis=1, keepdims=True)
        fc = np.cumsum(c, axis=1)[:, :-1] / c.sum(axis=1, keepdims=True)
        with np.errstate(over="ignore"):
            return _capped(np.asarray(np.abs(fr - fc) @ gaps, dtype=np.float64) / norm)

    return TestResult(
        value=value,
        effect=value,
        binned=Binned(ref_counts, cur_counts, of_counts, exact=False),
        details={"reference_std": norm / ref.scale},
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
