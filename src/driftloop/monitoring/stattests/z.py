"""Two-proportion Z-test (``z``): binary columns, small samples.

Evidently's default for a column with at most 2 distinct values when the reference has at
most 1,000 values. ``value`` is the two-sided p-value of the difference between the shares
of the first value (in sorted order) in the two samples, pooled standard error, as
Evidently computes it (1 when both samples hold the same single value); drift below 0.05
under the fixed rule. The effect size is Cramer's V of the 2 x 2 table (the absolute phi
coefficient); the sample-size-aware decision needs V >= 0.1.
"""

from __future__ import annotations

import numpy as np

from driftloop.monitoring.stattests.base import (
    Binned,
    ColumnData,
    StatTest,
    TestResult,
    aligned_counts,
    cramers_v,
    register,
)
from driftloop.monitoring.stattests.chisquare import as_categories


def z(ref: ColumnData, cur: ColumnData) -> TestResult:
    from scipy.stats import norm

    r, c, keys = aligned_counts(as_categories(ref), as_categories(cur))
    effect = float(cramers_v(r, c)[0])
    binned = Binned(r, c, cramers_v, exact=True)
    if len(keys) == 1:
        return TestResult(1.0, effect, binned)
    first = sorted(range(len(keys)), key=lambda i: keys[i])[0]
    n1, n2 = r.sum(), c.sum()
    p1 = float(n1 - r[first]) / n1  # Evidently codes the first value 0, the others 1
    p2 = float(n2 - c[first]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    p_value = float(2 * (1 - norm.cdf(np.abs(stat))))
    return TestResult(p_value, effect, binned)


Z = register(
    StatTest(
        name="z",
        display_name="Z-test p_value",
        kinds=frozenset({"categorical"}),
        returns="p_value",
        default_threshold=0.05,
        effect_name="Cramer's V",
        default_effect_threshold=0.1,
        compute=z,
        doc=__doc__ or "",
    )
)
