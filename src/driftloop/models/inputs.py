"""What a fitted pipeline takes: model inputs as pandas, and the lineage column of a batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

BATCH = "__batch_seq"


def to_pandas_inputs(frame: pl.DataFrame, inputs: list[str], categorical: list[str]) -> Any:
    """Model inputs as pandas: numbers as float64 (nulls as NaN), categories as objects."""
    numeric = [c for c in inputs if c not in categorical]
    cast = frame.select(
        *[pl.col(c).cast(pl.Float64) for c in numeric],
        *[pl.col(c).cast(pl.String) for c in categorical],
    )
    out = cast.to_pandas()
    for c in categorical:
        out[c] = out[c].astype(object).where(out[c].notna(), np.nan)
    return out[inputs]
