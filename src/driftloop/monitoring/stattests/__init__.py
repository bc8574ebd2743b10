"""Drift tests, one per module, registered by the names Evidently users know them by.

=================  ===========  =========  =================  ==============  ==========
name               kinds        value      fixed threshold    effect          effect min
=================  ===========  =========  =================  ==============  ==========
``ks``             numeric      p-value    drift if < 0.05    KS statistic D  0.1
``wasserstein``    numeric      distance   drift if >= 0.1    the value       0.1
``psi``            both         distance   drift if >= 0.1    the value       0.1
``jensenshannon``  both         distance   drift if >= 0.1    the value       0.07
``chisquare``      categorical  p-value    drift if < 0.05    Cramer's V      0.1
``z``              categorical  p-value    drift if < 0.05    Cramer's V      0.1
=================  ===========  =========  =================  ==============  ==========

:func:`select_test` picks one by kind and sample size exactly as Evidently's
``DataDriftPreset`` does.
"""

from __future__ import annotations

from driftloop.monitoring.stattests import chisquare, jensenshannon, ks, psi, wasserstein, z
from driftloop.monitoring.stattests.base import (
    Binned,
    CategoricalData,
    ColumnData,
    Kind,
    NumericData,
    StatTest,
    TestResult,
    get_test,
    registry,
)

__all__ = [
    "Binned",
    "CategoricalData",
    "ColumnData",
    "Kind",
    "NumericData",
    "StatTest",
    "TestResult",
    "get_test",
    "registry",
    "select_test",
]

_MODULES = (chisquare, jensenshannon, ks, psi, wasserstein, z)  # importing registers them
SMALL_REFERENCE = 1_000


def select_test(ref: ColumnData, cur: ColumnData) -> StatTest:
    """Evidently's automatic choice (``_get_default_stattest``).

    Reference of at most 1,000 values: numeric with more than 5 distinct values (both
    samples together) -> ``ks``; otherwise more than 2 -> ``chisquare``, else ``z``.
    Larger reference: numeric with more than 5 distinct values -> ``wasserstein``;
    anything else -> ``jensenshannon``.
    """
    if isinstance(ref, NumericData) and isinstance(cur, NumericData):
        distinct = _union_distinct(ref, cur, limit=5)
        if ref.count <= SMALL_REFERENCE:
            if distinct > 5:
                return get_test("ks")
            return get_test("chisquare" if distinct > 2 else "z")
        return get_test("wasserstein" if distinct > 5 else "jensenshannon")
    assert isinstance(ref, CategoricalData) and isinstance(cur, CategoricalData)
    if ref.count <= SMALL_REFERENCE:
        present = {*ref.categories[ref.counts > 0].tolist(), *cur.categories[cur.counts > 0]}
        return get_test("chisquare" if len(present) > 2 else "z")
    return get_test("jensenshannon")


def _union_distinct(ref: NumericData, cur: NumericData, *, limit: int) -> int:
    """Distinct values of both samples together, exact up to ``limit`` (else limit + 1)."""
    a, b = ref.distinct_values(limit), cur.distinct_values(limit)
    if a is None or b is None:
        return limit + 1
    return len(set(a.tolist()) | set(b.tolist()))
