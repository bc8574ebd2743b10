"""The reference side of drift monitoring: column data read from the champion.

A :class:`Reference` maps each column to its role and, on demand, its test-ready data
(:class:`~driftloop.monitoring.stattests.NumericData` sorted values or
:class:`~driftloop.monitoring.stattests.CategoricalData` counts). It comes from the
model package's ``reference_columns.parquet`` (sorted at training time, one row group per
column, see :mod:`driftloop.models.profile`: a column's values are read when it is tested and
dropped after, so memory holds the columns in flight, not all of them), from a frame
(``Reference.from_frame``, what training does), or, for a package that predates reference
columns, from the JSON profile's sample and category counts (``Reference.from_profile``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftloop.monitoring.stattests import CategoricalData, ColumnData, Kind, NumericData

OTHER = "(other)"  # the reference's categories beyond the stored ones, lumped together


@dataclass(frozen=True)
class ReferenceColumn:
    name: str
    role: str  # feature | target | prediction
    kind: Kind
    dtype: str
    count: int  # values present
    missing: int
    sampled: bool = False
    importance: float | None = None  # permutation importance on the holdout, when stored
    data: ColumnData | None = field(default=None, repr=False)
    loader: Callable[[], ColumnData] | None = field(default=None, repr=False)

    def load(self) -> ColumnData:
        if self.data is not None:
            return self.data
        assert self.loader is not None
        return self.loader()


@dataclass(frozen=True)
class Reference:
    columns: dict[str, ReferenceColumn]
    source: str  # reference_columns | frame | profile_sample
    rows: int

    def by_role(self, role: str) -> list[ReferenceColumn]:
        return [c for c in self.columns.values() if c.role == role]

    def importance(self) -> dict[str, float] | None:
        """The inputs' stored permutation importances, when training stored them."""
        found = {c.name: c.importance for c in self.by_role("feature")}
        known = {k: v for k, v in found.items() if v is not None}
        return known if known and sum(known.values()) > 0 else None

    @classmethod
    def from_columns_frame(cls, frame: pl.DataFrame, source: str) -> Reference:
        values = frame.get_column("sorted_values")
        metas = frame.drop("sorted_values").iter_rows(named=True)
        columns = {}
        for i, meta in enumerate(metas):
            data = _column_data(meta, values[i] if meta["kind"] == "numeric" else None)
            columns[meta["column"]] = _column(meta, data=data)
        return cls(columns, source, _rows(columns))

    @classmethod
    def from_frame(
        cls, frame: pl.DataFrame, *, roles: dict[str, str] | None = None, seed: int = 0
    ) -> Reference:
        from driftloop.models.profile import reference_columns

        return cls.from_columns_frame(reference_columns(frame, roles=roles, seed=seed), "frame")

    @classmethod
    def read(cls, path: Path) -> Reference:
        """The reference columns file; numeric values stay on disk until a column is tested."""
        names = [c for c in pl.read_parquet_schema(path) if c != "sorted_values"]
        metas = pl.read_parquet(path, columns=names).iter_rows(named=True)
        columns = {}
        for i, meta in enumerate(metas):
            if meta["kind"] == "numeric":
                columns[meta["column"]] = _column(meta, loader=_row_loader(path, i, meta))
            else:
                columns[meta["column"]] = _column(meta, data=_column_data(meta, None))
        return cls(columns, "reference_columns", _rows(columns))

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> Reference:
        """A package without reference columns: numeric columns from the JSON sample."""
        from driftloop.monitoring.current import numeric_data

        sample = profile["sample"]["columns"]
        columns: dict[str, ReferenceColumn] = {}
        for name, summary in profile["columns"].items():
            data: ColumnData
            if summary["kind"] == "numeric":
                series = pl.Series(name, sample.get(name, []), strict=False)
                if series.dtype == pl.String:  # dates and datetimes are stored as ISO text
                    series = series.str.to_datetime(time_unit="us", strict=False)
                data = numeric_data(series)
            else:
                meta = {**summary, "column": name}
                data = _column_data(meta, None)
            columns[name] = ReferenceColumn(
                name, "feature", summary["kind"], summary["dtype"], data.count, data.missing,
                True, data=data,
            )  # fmt: skip
        return cls(columns, "profile_sample", int(profile["row_count"]))


def _rows(columns: dict[str, ReferenceColumn]) -> int:
    features = [c for c in columns.values() if c.role == "feature"] or list(columns.values())
    return max((c.count + c.missing for c in features), default=0)


def _column(
    meta: dict[str, Any],
    *,
    data: ColumnData | None = None,
    loader: Callable[[], ColumnData] | None = None,
) -> ReferenceColumn:
    return ReferenceColumn(
        name=meta["column"],
        role=meta["role"],
        kind=meta["kind"],
        dtype=meta["dtype"],
        count=int(meta["count"]),
        missing=int(meta["null_count"]),
        sampled=bool(meta["sampled"]),
        importance=meta.get("importance"),
        data=data,
        loader=loader,
    )


def _column_data(meta: dict[str, Any], values: pl.Series | None) -> ColumnData:
    if meta["kind"] == "numeric":
        assert values is not None
        array = np.ascontiguousarray(values.to_numpy(), dtype=np.float64)
        return NumericData(array, int(meta["null_count"]))
    categories = list(meta["categories"] or [])
    counts = list(meta["counts"] or [])
    if meta["other_count"]:
        categories.append(OTHER)
        counts.append(meta["other_count"])
    return CategoricalData(
        np.array(categories, dtype=object),
        np.array(counts, dtype=np.int64),
        int(meta["null_count"]),
    )


def _row_loader(path: Path, row: int, meta: dict[str, Any]) -> Callable[[], ColumnData]:
    """Reads one column's sorted values: its own row group when written per column."""

    def load() -> ColumnData:
        frame = pl.scan_parquet(path).slice(row, 1).select("sorted_values").collect()
        return _column_data(meta, frame.get_column("sorted_values")[0])

    return load
