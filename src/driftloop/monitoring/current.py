"""The current side: a Polars column reduced to test-ready data, like the reference's."""

from __future__ import annotations

import numpy as np
import polars as pl

from driftloop.monitoring.stattests import CategoricalData, ColumnData, Kind, NumericData

_SECONDS_PER_DAY = 86_400.0


def as_number(series: pl.Series) -> pl.Series:
    """Float64 with NaN and +-inf as null; dates and datetimes as epoch seconds (the
    profile's convention); text that does not parse as a number is null."""
    dtype = series.dtype
    if isinstance(dtype, pl.Date):
        values = series.cast(pl.Int64).cast(pl.Float64) * _SECONDS_PER_DAY
    elif isinstance(dtype, pl.Datetime):
        values = series.dt.epoch("us").cast(pl.Float64) / 1_000_000.0
    elif dtype == pl.Boolean:
        values = series.cast(pl.Float64)
    else:
        values = series.cast(pl.Float64, strict=False)
    return values.filter(values.is_finite())


def numeric_data(series: pl.Series) -> NumericData:
    present = as_number(series)
    array = present.to_numpy()
    return NumericData(np.sort(array), series.len() - present.len())


def categorical_data(series: pl.Series) -> CategoricalData:
    text = series.cast(pl.String).rename("value")
    counts = text.drop_nulls().value_counts(sort=True, name="count")
    return CategoricalData(
        np.array(counts.get_column(text.name).to_list(), dtype=object),
        counts.get_column("count").cast(pl.Int64).to_numpy(),
        text.null_count(),
    )


def column_data(series: pl.Series, kind: Kind) -> ColumnData:
    """The column as the reference's kind says (a number column may arrive as text)."""
    return numeric_data(series) if kind == "numeric" else categorical_data(series)
