"""Chi-square goodness of fit (``chisquare``): categorical columns, small samples.

Evidently's default for a categorical column (or a numeric one with 3 to 5 distinct values)
with more than 2 distinct values when the reference has at most 1,000 values. ``value`` is
the p-value of ``scipy.stats.chisquare`` with the current counts observed and the reference
counts scaled to the current size expected, as Evidently computes it (a category absent
from the reference makes it 0); drift below 0.05 under the fixed rule. The effect size is
Cramer's V of the 2 x K table (sample x category), 0 to 1; the sample-size-aware decision
needs V >= 0.1 (Cohen's "small" effect).
"""

from __future__ import annotations

import numpy as np

from driftloop.monitoring.stattests.base import (
    Binned,
    CategoricalData,
    ColumnData,
    NumericData,
    StatTest,
    TestResult,
    aligned_counts,
    cramers_v,
    numeric_as_categories,
    register,
)


def as_categories(data: ColumnData) -> CategoricalData:
    return numeric_as_categories(data) if isinstance(data, NumericData) else data


def chisquare(ref: ColumnData, cur: ColumnData) -> TestResult:
    from scipy import stats

    r, c, _ = aligned_counts(as_categories(ref), as_categories(cur))
    expected = r * (c.sum() / r.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        p_value = float(stats.chisquare(c, expected).pvalue)
    effect = float(cramers_v(r, c)[0])
    return TestResult(p_value, effect, Binned(r, c, cramers_v, exact=True))


CHI_SQUARE = register(
    StatTest(
        name="chisquare",
        display_name="chi-square p_value",
        kinds=frozenset({"categorical"}),
        returns="p_value",
        default_threshold=0.05,
        effect_name="Cramer's V",
        default_effect_threshold=0.1,
        compute=chisquare,
        doc=__doc__ or "",
    )
)
