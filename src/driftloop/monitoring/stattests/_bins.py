"""Bins shared by several tests: Evidently's equal-width bins and reference quantile bins."""

from __future__ import annotations

import math

import numpy as np

from driftloop.monitoring.stattests.base import (
    CategoricalData,
    FloatArray,
    IntArray,
    NumericData,
    aligned_counts,
    histogram_counts,
    numeric_as_categories,
)

QUANTILE_BINS = 100  # bins of the permutation null for KS and Wasserstein


def sturges_edges(ref: NumericData, cur: NumericData) -> FloatArray:
    """``numpy.histogram_bin_edges(concat(ref, cur), bins="sturges")``, without the concat."""
    lo = min(ref.sorted_values[0], cur.sorted_values[0])
    hi = max(ref.sorted_values[-1], cur.sorted_values[-1])
    size = ref.count + cur.count
    if lo == hi:
        return np.linspace(lo - 0.5, hi + 0.5, 2)
    width = (hi - lo) / (np.log2(size) + 1.0)
    bins = math.ceil((hi - lo) / width)
    return np.linspace(lo, hi, bins + 1)


def evidently_binned(
    ref: NumericData | CategoricalData, cur: NumericData | CategoricalData
) -> tuple[IntArray, IntArray]:
    """The counts behind Evidently's PSI and Jensen-Shannon (``get_binned_data``).

    A numeric column with more than 20 distinct reference values gets Sturges' equal-width
    bins over both samples' range; anything else is counted per value.
    """
    if isinstance(ref, NumericData) and isinstance(cur, NumericData):
        if ref.distinct_count() > 20:
            edges = sturges_edges(ref, cur)
            return (
                histogram_counts(ref.sorted_values, edges),
                histogram_counts(cur.sorted_values, edges),
            )
        ref_c, cur_c = numeric_as_categories(ref), numeric_as_categories(cur)
    else:
        assert isinstance(ref, CategoricalData) and isinstance(cur, CategoricalData)
        ref_c, cur_c = ref, cur
    r, c, _ = aligned_counts(ref_c, cur_c)
    return r, c


def quantile_bins(
    ref: NumericData, cur: NumericData, bins: int = QUANTILE_BINS
) -> tuple[IntArray, IntArray, FloatArray]:
    """Counts over quantile bins of both samples, and each bin's mean over both samples.

    Bins are [e_k, e_k+1) with open outer bins; the edges are the quantiles of each sample
    at k/(bins/2), repeats dropped, so a column with few distinct values gets one bin per
    value and a constant reference still has the current data's spread to permute.
    """
    r, c = ref.sorted_values, cur.sorted_values
    half = max(1, bins // 2)
    picks = [
        values[np.linspace(0, values.size - 1, half + 1).round().astype(np.int64)]
        for values in (r, c)
        if values.size
    ]
    edges = np.unique(np.concatenate(picks)) if picks else np.empty(0)
    edges = edges[1:]  # the smallest value opens the first bin; no empty bin below it
    r_at = np.concatenate([[0], np.searchsorted(r, edges, side="left"), [r.size]])
    c_at = np.concatenate([[0], np.searchsorted(c, edges, side="left"), [c.size]])
    r_sum, c_sum = _bin_sums(r, r_at), _bin_sums(c, c_at)
    ref_counts, cur_counts = np.diff(r_at), np.diff(c_at)
    total = ref_counts + cur_counts
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (r_sum + c_sum) / total
    # an empty bin (possible on the current side only when the reference is empty) takes
    # its neighbour's position: it moves no mass
    means = _fill_empty(means)
    return ref_counts.astype(np.int64), cur_counts.astype(np.int64), means


def _bin_sums(values: FloatArray, bounds: IntArray) -> FloatArray:
    """Sum of ``values[bounds[k]:bounds[k+1]]`` per bin, without a cumulative-sum copy."""
    counts = np.diff(bounds)
    if values.size == 0:
        return np.zeros(counts.size)
    sums = np.add.reduceat(values, np.minimum(bounds[:-1], values.size - 1))
    return np.where(counts > 0, sums, 0.0)


def _fill_empty(means: FloatArray) -> FloatArray:
    ok = np.isfinite(means)
    if ok.all() or not ok.any():
        return np.nan_to_num(means)
    idx = np.where(ok, np.arange(means.size), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = means[idx]
    first = np.argmax(ok)
    filled[:first] = means[first]
    return filled
