"""Population Stability Index (``psi``): numeric and categorical columns.

``value`` is sum((r - c) * ln(r / c)) over bins, r and c the shares of the reference and
current values in each bin, as Evidently computes it: a numeric column with more than 20
distinct reference values gets Sturges' equal-width bins over both samples' range, anything
else one bin per value; an empty bin's share becomes min(non-zero share) / 1e6 (or 1e-4
when that minimum is above 1e-4), separately per side. Drift at or above 0.1 under the fixed
rule (0.1-0.25 is the usual "moderate shift", above 0.25 "major"). The effect size is the
value. Never selected automatically; choose it in ``monitoring``.
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


def _filled_shares(counts: IntArray) -> FloatArray:
    shares = counts / counts.sum(axis=1, keepdims=True)
    smallest = np.where(shares > 0, shares, np.inf).min(axis=1, keepdims=True)
    fill = np.where(smallest <= 0.0001, smallest / 10**6, 0.0001)
    return np.where(shares == 0, fill, shares)


def psi_of_counts(ref: IntArray, cur: IntArray) -> FloatArray:
    r = _filled_shares(np.atleast_2d(ref))
    c = _filled_shares(np.atleast_2d(cur))
    return np.asarray(((r - c) * np.log(r / c)).sum(axis=1), dtype=np.float64)


def psi(ref: ColumnData, cur: ColumnData) -> TestResult:
    r, c = evidently_binned(ref, cur)
    value = float(psi_of_counts(r, c)[0])
    return TestResult(value, value, Binned(r, c, psi_of_counts, exact=True), {"bins": r.size})


PSI = register(
    StatTest(
        name="psi",
        display_name="PSI",
        kinds=frozenset({"numeric", "categorical"}),
        returns="distance",
        default_threshold=0.1,
        effect_name="PSI",
        default_effect_threshold=0.1,
        compute=psi,
        doc=__doc__ or "",
    )
)
