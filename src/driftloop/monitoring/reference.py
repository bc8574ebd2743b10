"""The reference side of drift monitoring: column data read once from the champion.

A :class:`Reference` maps each column to its role and its test-ready data
(:class:`~driftloop.monitoring.stattests.NumericData` sorted values or
:class:`~driftloop.monitoring.stattests.CategoricalData` counts). It comes from the
model package's ``reference_columns.parquet`` (sorted at training time, see
:mod:`driftloop.profile`), from a frame (``Reference.from_frame``, what training does), or,
for a package that predates reference columns, from the JSON profile's sample and category
counts (``Reference.from_profile``).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    data: ColumnData
    sampled: bool = False


@dataclass(frozen=True)
class Reference:
    columns: dict[str, ReferenceColumn]
    source: str  # reference_columns | frame | profile_sample
    rows: int

    def by_role(self, role: str) -> list[ReferenceColumn]:
        return [c for c in self.columns.values() if c.role == role]

    @classmethod
    def from_columns_frame(cls, frame: pl.DataFrame, source: str) -> Reference:
        columns: dict[str, ReferenceColumn] = {}
        rows = 0
        values = frame.get_column("sorted_values")
        for i, meta in enumerate(frame.drop("sorted_values").iter_rows(named=True)):
            rows = max(rows, int(meta["count"]) + int(meta["null_count"]))
            data: ColumnData
            if meta["kind"] == "numeric":
                array = values[i].to_numpy()
                data = NumericData(
                    np.ascontiguousarray(array, dtype=np.float64), meta["null_count"]
                )
            else:
                categories = list(meta["categories"] or [])
                counts = list(meta["counts"] or [])
                if meta["other_count"]:
                    categories.append(OTHER)
                    counts.append(meta["other_count"])
                data = CategoricalData(
                    np.array(categories, dtype=object),
                    np.array(counts, dtype=np.int64),
                    meta["null_count"],
                )
            columns[meta["column"]] = ReferenceColumn(
                meta["column"], meta["role"], meta["kind"], meta["dtype"], data, meta["sampled"]
            )
        return cls(columns, source, rows)

    @classmethod
    def from_frame(
        cls, frame: pl.DataFrame, *, roles: dict[str, str] | None = None, seed: int = 0
    ) -> Reference:
        from driftloop.profile import reference_columns

        return cls.from_columns_frame(reference_columns(frame, roles=roles, seed=seed), "frame")

    @classmethod
    def read(cls, path: Path) -> Reference:
        return cls.from_columns_frame(pl.read_parquet(path), "reference_columns")

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> Reference:
        """A package without reference columns: numeric columns from the JSON sample."""
        sample = profile["sample"]["columns"]
        columns: dict[str, ReferenceColumn] = {}
        for name, summary in profile["columns"].items():
            data: ColumnData
            if summary["kind"] == "numeric":
                series = pl.Series(name, sample.get(name, []), strict=False)
                if series.dtype == pl.String:  # dates and datetimes are stored as ISO text
                    series = series.str.to_datetime(time_unit="us", strict=False)
                from driftloop.monitoring.current import numeric_data

                data = numeric_data(series)
            else:
                categories = list(summary["categories"])
                counts = list(summary["counts"])
                if summary["other_count"]:
                    categories.append(OTHER)
                    counts.append(summary["other_count"])
                data = CategoricalData(
                    np.array(categories, dtype=object),
                    np.array(counts, dtype=np.int64),
                    summary["null_count"],
                )
            columns[name] = ReferenceColumn(
                name, "feature", summary["kind"], summary["dtype"], data, True
            )
        return cls(columns, "profile_sample", int(profile["row_count"]))
