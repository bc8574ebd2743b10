"""Jensen-Shannon distance (``jensenshannon``): numeric and categorical columns.

Evidently's default for a categorical column (or a numeric one with at most 5 distinct
values) when the reference has more than 1,000 values. ``value`` is
``scipy.spatial.distance.jensenshannon`` (natural log, so 0 to sqrt(ln 2) ~ 0.83) of the
binned shares, binned as for PSI but without filling empty bins; drift at or above 0.1 under
the fixed rule. The effect size is the value; the sample-size-aware decision needs 0.07,
Cohen's "small" effect: for two samples the JS distance is about Cramer's V / sqrt(2), so
0.07 matches V = 0.1 (a binary share moving by about 10 percentage points).
"""

from __future__ import annotations

import numpy as np

from driftloop.monitoring.stattests._bins import evidently_binned
from driftloop.monitoring.stattests.base import (
    Binned,
    ColumnData,
    FloatArray,
    IntArray,
    StatTest,
    TestResult,
    register,
)


def js_of_counts(ref: IntArray, cur: IntArray) -> FloatArray:
    from scipy.special import rel_entr

    p = np.atleast_2d(ref) / np.atleast_2d(ref).sum(axis=1, keepdims=True)
    q = np.atleast_2d(cur) / np.atleast_2d(cur).sum(axis=1, keepdims=True)
    m = (p + q) / 2.0
    js = rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)
    return np.asarray(np.sqrt(np.maximum(js, 0.0) / 2.0), dtype=np.float64)


def jensenshannon(ref: ColumnData, cur: ColumnData) -> TestResult:
    r, c = evidently_binned(ref, cur)
    value = float(js_of_counts(r, c)[0])
    return TestResult(value, value, Binned(r, c, js_of_counts, exact=True), {"bins": r.size})


JENSEN_SHANNON = register(
    StatTest(
        name="jensenshannon",
        display_name="Jensen-Shannon distance",
        kinds=frozenset({"numeric", "categorical"}),
        returns="distance",
        default_threshold=0.1,
        effect_name="Jensen-Shannon distance",
        default_effect_threshold=0.07,
        compute=jensenshannon,
        doc=__doc__ or "",
    )
)
