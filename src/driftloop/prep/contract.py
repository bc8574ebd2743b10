"""Cleaning steps around the contract check: null markers and imputation values.

All functions are pure: frames in, frames or values out.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from driftloop.core.spec import ContractSpec, CsvOptions, ImputeSpec
from driftloop.prep.rules import parsed, within_contract


def normalize_strings(frame: pl.LazyFrame, opts: CsvOptions, *, trim: bool) -> pl.LazyFrame:
    """Trim (if asked) and turn the source's null markers into real nulls."""
    names = [c for c in frame.collect_schema().names() if not c.startswith("__")]
    return frame.with_columns(normalized(names, list(opts.null_values), trim=trim))


def normalized(names: list[str], nulls: list[str], *, trim: bool) -> list[pl.Expr]:
    """Each text column trimmed (if asked), with null markers as real nulls."""
    others = [n for n in nulls if n != ""]
    exprs = []
    for name in names:
        col = pl.col(name).str.strip_chars() if trim else pl.col(name)
        # The empty marker by its length (stored in each value's view), not by a hash lookup:
        # this runs on every value of every column.
        marker = col.str.len_bytes() == 0 if "" in nulls else pl.lit(False)
        if others:
            marker = marker | col.is_in(others)
        exprs.append(pl.when(marker).then(None).otherwise(col).alias(name))
    return exprs


def imputation_values(
    frame: pl.LazyFrame, rules: dict[str, ImputeSpec], contract: ContractSpec
) -> dict[str, Any]:
    """The fill value per column.

    Statistics (mean, median, mode) come only from values that satisfy the column's own
    contract rules, so an absurd value that will be quarantined cannot skew the fill. They
    need a pass over the data before the main one; constants do not.
    """
    stats = []
    for name, rule in rules.items():
        spec = contract.columns[name]
        valid = parsed(name, spec).filter(within_contract(name, spec))
        if rule.strategy == "mean":
            stats.append(valid.mean().alias(name))
        elif rule.strategy == "median":
            stats.append(valid.median().alias(name))
        elif rule.strategy == "mode":
            stats.append(valid.mode().sort().first().alias(name))
    row = frame.select(stats).collect().row(0, named=True) if stats else {}
    fills: dict[str, Any] = {}
    for name, rule in rules.items():
        value = rule.value if rule.strategy == "constant" else row[name]
        if value is not None and contract.columns[name].dtype == "int":
            value = round(float(value))
        fills[name] = value
    return fills


def imputation_report(
    rules: dict[str, ImputeSpec], fills: dict[str, Any], filled: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """What filled what, and how many values of kept rows it filled."""
    return {
        name: {
            "strategy": rule.strategy,
            "value": fills.get(name),
            "filled": int(filled.get(name, 0)) if fills.get(name) is not None else 0,
        }
        for name, rule in rules.items()
    }
