"""Data drift: every column's test and decision, and whether the dataset drifted.

Columns run in a thread pool (NumPy and Polars release the GIL while they sort and count),
so a monitor uses every core. Each column's random stream is seeded from the run's seed
and the column's name, so results do not depend on the order threads finish in.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from driftloop.core.spec import MonitoringSpec
from driftloop.monitoring.current import column_data
from driftloop.monitoring.decision import decide
from driftloop.monitoring.reference import Reference, ReferenceColumn
from driftloop.monitoring.stattests import (
    CategoricalData,
    ColumnData,
    NumericData,
    StatTest,
    get_test,
    select_test,
)
from driftloop.monitoring.stattests.base import aligned_counts, common_scale, histogram_counts

PLOT_BINS = 30
PLOT_CATEGORIES = 15


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict with its evidence (the JSON report's ``columns`` entries)."""

    column: str
    role: str
    kind: str
    test: str | None
    test_name: str | None
    value: float | None
    threshold: float | None
    value_drift: bool | None  # the fixed-threshold (Evidently) verdict on ``value``
    effect: float | None
    effect_name: str | None
    effect_threshold: float | None
    noise_floor: float | None
    p_value: float | None
    drift: bool
    reason: str
    reference_count: int
    reference_missing: int
    current_count: int
    current_missing: int
    importance: float | None = None
    plot: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DataDrift:
    columns: list[ColumnDrift]
    dataset_drift: bool
    share: float
    weighted_share: float
    drift_share: float
    weights: str  # uniform, or where the importances came from

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drift]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "share_of_drifted_columns": self.share,
            "weighted_share_of_drifted_columns": self.weighted_share,
            "weights": self.weights,
            "number_of_columns": len(self.columns),
            "number_of_drifted_columns": len(self.drifted),
            "drifted_columns": self.drifted,
            "columns": [c.to_dict() for c in self.columns],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if np.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def choose_test(
    ref: ReferenceColumn, ref_data: ColumnData, cur_data: ColumnData, settings: MonitoringSpec
) -> StatTest:
    """The column's override, else the spec's test for its kind, else Evidently's choice."""
    override = settings.columns.get(ref.name)
    name = override.test if override is not None else None
    if name is None:
        name = settings.numeric_test if ref.kind == "numeric" else settings.categorical_test
    if name is None:
        return select_test(ref_data, cur_data)
    test = get_test(name)
    if ref.kind not in test.kinds:
        from driftloop.core.errors import SpecError

        raise SpecError(
            f"monitoring.columns.{ref.name}.test: {name!r} does not apply to the {ref.kind} "
            f"column {ref.name!r}; use one of "
            f"{sorted(n for n, t in _tests().items() if ref.kind in t.kinds)}"
        )
    return test


def _tests() -> dict[str, StatTest]:
    from driftloop.monitoring.stattests import registry

    return registry()


def column_drift(
    ref: ReferenceColumn,
    current: pl.Series,
    settings: MonitoringSpec,
    *,
    seed: int,
    importance: float | None = None,
) -> ColumnDrift:
    cur = column_data(current, ref.kind)
    ref_data = ref.load()  # read now, dropped when the column is done
    if ref_data.count == 0 or cur.count == 0:
        side = "reference" if ref_data.count == 0 else "current data"
        return ColumnDrift(
            column=ref.name,
            role=ref.role,
            kind=ref.kind,
            test=None,
            test_name=None,
            value=None,
            threshold=None,
            value_drift=None,
            effect=None,
            effect_name=None,
            effect_threshold=None,
            noise_floor=None,
            p_value=None,
            drift=False,
            reason=f"no values in the {side}: not tested",
            reference_count=ref_data.count,
            reference_missing=ref_data.missing,
            current_count=cur.count,
            current_missing=cur.missing,
            importance=importance,
        )
    if isinstance(ref_data, NumericData) and isinstance(cur, NumericData):
        ref_data, cur = common_scale(ref_data, cur)  # 1e308 is a valid float: no overflow
    test = choose_test(ref, ref_data, cur, settings)
    override = settings.columns.get(ref.name)
    threshold = (override.threshold if override else None) or test.default_threshold
    effect_threshold = (
        override.effect_threshold if override and override.effect_threshold is not None else None
    )
    if effect_threshold is None:
        effect_threshold = test.default_effect_threshold
    result = test.compute(ref_data, cur)
    rng = np.random.default_rng([settings.seed, seed, zlib.crc32(ref.name.encode())])
    decision = decide(
        test,
        result,
        threshold=threshold,
        effect_threshold=effect_threshold,
        alpha=settings.alpha,
        permutations=settings.permutations,
        rng=rng,
        method=settings.method,
    )
    return ColumnDrift(
        column=ref.name,
        role=ref.role,
        kind=ref.kind,
        test=test.name,
        test_name=test.display_name,
        value=result.value,
        threshold=threshold,
        value_drift=test.fixed_threshold_drift(result.value, threshold),
        effect=result.effect,
        effect_name=test.effect_name,
        effect_threshold=effect_threshold,
        noise_floor=decision.noise_floor,
        p_value=decision.p_value,
        drift=decision.drift,
        reason=decision.reason,
        reference_count=ref_data.count,
        reference_missing=ref_data.missing,
        current_count=cur.count,
        current_missing=cur.missing,
        importance=importance,
        plot=plot_data(ref_data, cur),
    )


def data_drift(
    reference: Reference,
    current: pl.DataFrame,
    settings: MonitoringSpec,
    *,
    roles: tuple[str, ...] = ("feature",),
    importance: Mapping[str, float] | None = None,
    importance_source: str = "feature_importance",
    seed: int = 0,
    workers: int | None = None,
    executor: Executor | None = None,
) -> DataDrift:
    """Drift of every reference column of the given roles that ``current`` holds, one
    test per column: on ``workers`` threads here, or on ``executor`` (a Dask cluster's,
    when an orchestrator installed one: :func:`driftloop.core.executor.current`)."""
    wanted = [
        ref
        for ref in reference.columns.values()
        if ref.role in roles
        and ref.name in current.columns
        and (settings.columns.get(ref.name) is None or settings.columns[ref.name].enabled)
    ]
    weights = _weights(wanted, importance if settings.weight_by_importance else None)
    workers = workers or min(len(wanted), os.cpu_count() or 1) or 1

    # the biggest columns first, so the pool is not left waiting on one at the end
    order = sorted(wanted, key=lambda r: -r.count)
    pieces = (
        order,
        [current.get_column(r.name) for r in order],  # each test gets its column only
        [settings] * len(order),
        [seed] * len(order),
        [weights.get(r.name) for r in order],
    )
    if executor is not None:  # an orchestrator's (a Dask cluster's): the same tests there
        found = list(executor.map(_column_drift_of, *pieces))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(_column_drift_of, *pieces))
    done = dict(zip([r.name for r in order], found, strict=True))
    columns = [done[r.name] for r in wanted]
    n = len(columns)
    share = sum(c.drift for c in columns) / n if n else 0.0
    total = sum(weights.values()) if weights else 0.0
    if importance and total > 0:
        weighted = sum(weights[c.column] for c in columns if c.drift) / total
        kind = importance_source
    else:
        weighted, kind = share, "uniform"
    return DataDrift(
        columns, weighted >= settings.drift_share, share, weighted, settings.drift_share, kind
    )


def _column_drift_of(
    ref: ReferenceColumn,
    series: pl.Series,
    settings: MonitoringSpec,
    seed: int,
    importance: float | None,
) -> ColumnDrift:
    """One column's test, from its own inputs only (a piece an executor may run anywhere)."""
    return column_drift(ref, series, settings, seed=seed, importance=importance)


def _weights(
    columns: list[ReferenceColumn], importance: Mapping[str, float] | None
) -> dict[str, float]:
    if not importance:
        return {}
    return {c.name: max(0.0, float(importance.get(c.name, 0.0))) for c in columns}


def plot_data(ref: ColumnData, cur: ColumnData) -> dict[str, Any]:
    """Shares per bin for the report's plots (robust range for numbers, top categories)."""
    if isinstance(ref, NumericData) and isinstance(cur, NumericData):
        lo = min(_quantile(ref.sorted_values, 0.005), _quantile(cur.sorted_values, 0.005))
        hi = max(_quantile(ref.sorted_values, 0.995), _quantile(cur.sorted_values, 0.995))
        if hi <= lo:  # one value: half a unit each side (and visible next to a huge value)
            pad = max(0.5 * ref.scale, abs(lo) * 2.0**-20)
            lo, hi = lo - pad, hi + pad
        edges = np.linspace(lo, hi, PLOT_BINS + 1)
        open_edges = edges.copy()
        open_edges[0], open_edges[-1] = -np.inf, np.inf  # the outer bins hold the tails
        r = histogram_counts(ref.sorted_values, open_edges) / ref.count
        c = histogram_counts(cur.sorted_values, open_edges) / cur.count
        return {
            "kind": "numeric",
            "edges": (edges / ref.scale).tolist(),  # in the column's units
            "reference": r.tolist(),
            "current": c.tolist(),
        }
    assert isinstance(ref, CategoricalData) and isinstance(cur, CategoricalData)
    r_counts, c_counts, keys = aligned_counts(ref, cur)
    r_share, c_share = r_counts / max(1, r_counts.sum()), c_counts / max(1, c_counts.sum())
    top = np.argsort(-(r_share + c_share), kind="stable")[:PLOT_CATEGORIES]
    categories = [str(k) for k in keys[top]]
    r_top, c_top = r_share[top].tolist(), c_share[top].tolist()
    if len(keys) > PLOT_CATEGORIES:
        categories.append("(others)")
        r_top.append(float(1 - sum(r_top)))
        c_top.append(float(1 - sum(c_top)))
    return {"kind": "categorical", "categories": categories, "reference": r_top, "current": c_top}


def _quantile(sorted_values: Any, q: float) -> float:
    return float(sorted_values[min(sorted_values.size - 1, int(q * sorted_values.size))])
