"""Kolmogorov-Smirnov (``ks``): numeric columns, small samples.

Evidently's default for a numeric column with more than 5 distinct values when the
reference has at most 1,000 values. ``value`` is the two-sample test's p-value
(``scipy.stats.ks_2samp``, two-sided, method ``auto``); drift below 0.05 under the fixed
rule. The effect size is the KS statistic D, the largest gap between the two empirical
distribution functions (0 to 1); the sample-size-aware decision needs D >= 0.1.
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


def _d_of_counts(ref: IntArray, cur: IntArray) -> FloatArray:
    fr = np.cumsum(ref, axis=1) / ref.sum(axis=1, keepdims=True)
    fc = np.cumsum(cur, axis=1) / cur.sum(axis=1, keepdims=True)
    return np.asarray(np.abs(fr - fc).max(axis=1), dtype=np.float64)


def ks(ref: NumericData, cur: NumericData) -> TestResult:
    from scipy import stats

    result = stats.ks_2samp(ref.sorted_values, cur.sorted_values)
    ref_counts, cur_counts, _ = quantile_bins(ref, cur)
    return TestResult(
        value=float(result.pvalue),
        effect=float(result.statistic),
        binned=Binned(ref_counts, cur_counts, _d_of_counts, exact=False),
    )


KS = register(
    StatTest(
        name="ks",
        display_name="K-S p_value",
        kinds=frozenset({"numeric"}),
        returns="p_value",
        default_threshold=0.05,
        effect_name="KS statistic D",
        default_effect_threshold=0.1,
        compute=ks,
        doc=__doc__ or "",
    )
)
