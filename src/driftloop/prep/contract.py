"""Turn raw strings into typed, clean rows and find every row that breaks the contract.

All functions here are pure: frames in, frames out. Problems are kept in a long frame, one
row per (record, column, rule), so a quarantined record carries every rule it broke.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from driftloop.spec import CleaningSpec, ColumnContract, ContractSpec, CsvOptions, ImputeSpec

POS = "__pos"
PROBLEM_SCHEMA = {POS: pl.UInt32, "column": pl.String, "rule": pl.String, "value": pl.String}

POLARS_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(),
    "float": pl.Float64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]


def empty_problems() -> pl.DataFrame:
    return pl.DataFrame(schema=PROBLEM_SCHEMA)


def normalize_strings(frame: pl.DataFrame, opts: CsvOptions, *, trim: bool) -> pl.DataFrame:
    """Trim (if asked) and turn the source's null markers into real nulls."""
    data_cols = [c for c in frame.columns if not c.startswith("__")]
    nulls = list(opts.null_values)
    exprs = []
    for name in data_cols:
        col = pl.col(name)
        if trim:
            col = col.str.strip_chars()
        exprs.append(pl.when(col.is_in(nulls)).then(None).otherwise(col).alias(name))
    return frame.with_columns(exprs)


def _parse(name: str, rule: ColumnContract) -> pl.Expr:
    raw = pl.col(name)
    match rule.dtype:
        case "str":
            return raw
        case "float":
            return raw.cast(pl.Float64, strict=False)
        case "int":
            as_float = raw.cast(pl.Float64, strict=False)
            whole = (
                pl.when(as_float == as_float.round(0)).then(as_float).cast(pl.Int64, strict=False)
            )
            return raw.cast(pl.Int64, strict=False).fill_null(whole)
        case "bool":
            low = raw.str.to_lowercase()
            return pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False)
        case "date":
            return raw.str.to_date(rule.format, strict=False)
        case "datetime":
            return raw.str.to_datetime(rule.format, time_unit="us", strict=False)
    raise AssertionError(rule.dtype)  # pragma: no cover - Literal is exhaustive


def cast_columns(frame: pl.DataFrame, contract: ContractSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast raw strings to contract types; report values that did not parse or are too long."""
    limit = contract.max_field_length
    columns = [c for c in contract.columns if c in frame.columns]
    flags = []
    for name in columns:
        rule = contract.columns[name]
        raw = pl.col(name)
        too_long = raw.str.len_chars() > limit
        bad_type = raw.is_not_null() & _parse(name, rule).is_null()
        flags.append(
            pl.when(too_long)
            .then(pl.lit(f"max_field_length({limit})"))
            .when(bad_type)
            .then(pl.lit(f"dtype({rule.dtype}{', ' + rule.format if rule.format else ''})"))
            .alias(name)
        )
    flagged = frame.select(flags).with_row_index(POS)
    problems = (
        flagged.unpivot(index=POS, variable_name="column", value_name="rule")
        .drop_nulls("rule")
        .join(
            frame.select(columns)
            .with_row_index(POS)
            .unpivot(index=POS, variable_name="column", value_name="value"),
            on=[POS, "column"],
            how="left",
        )
        .with_columns(pl.col("value").str.slice(0, 200))
        .select(list(PROBLEM_SCHEMA))
        .cast(PROBLEM_SCHEMA)  # type: ignore[arg-type]
    )
    typed = frame.with_columns(
        _parse(n, contract.columns[n]).cast(POLARS_TYPES[contract.columns[n].dtype]).alias(n)
        for n in columns
    )
    return typed, problems


def _within_contract(name: str, rule: ColumnContract) -> pl.Expr:
    """Values of a column that satisfy its own range and allowed-values rules."""
    ok = pl.lit(True)
    if rule.min is not None:
        ok = ok & (pl.col(name) >= rule.min)
    if rule.max is not None:
        ok = ok & (pl.col(name) <= rule.max)
    if rule.allowed is not None:
        ok = ok & pl.col(name).is_in(_typed_allowed(rule))
    return ok


def impute(
    frame: pl.DataFrame, rules: dict[str, ImputeSpec], contract: ContractSpec
) -> tuple[pl.DataFrame, dict[str, dict[str, Any]]]:
    """Fill missing values per rule; return the frame and what was filled with what.

    Statistics (mean, median, mode) come only from values that satisfy the column's own
    contract rules, so an absurd value that will be quarantined cannot skew the fill.
    """
    report: dict[str, dict[str, Any]] = {}
    exprs = []
    for name, rule in rules.items():
        if name not in frame.columns:
            continue
        col = frame.get_column(name)
        missing = col.null_count()
        valid = frame.filter(_within_contract(name, contract.columns[name])).get_column(name)
        value: Any
        if rule.strategy == "constant":
            value = rule.value
        elif rule.strategy == "mode":
            modes = valid.drop_nulls().mode()
            value = modes.sort().item(0) if len(modes) else None
        else:
            value = valid.mean() if rule.strategy == "mean" else valid.median()
            if col.dtype.is_integer() and value is not None:
                value = round(float(str(value)))
        if value is None:
            report[name] = {"strategy": rule.strategy, "value": None, "filled": 0}
            continue
        exprs.append(pl.col(name).fill_null(pl.lit(value).cast(col.dtype)))
        report[name] = {"strategy": rule.strategy, "value": value, "filled": missing}
    return (frame.with_columns(exprs) if exprs else frame), report


def _pandera_schema(contract: ContractSpec, present: list[str]) -> Any:
    import pandera.polars as pa

    columns = {}
    for name in present:
        rule = contract.columns[name]
        checks = []
        if rule.min is not None:
            checks.append(pa.Check.ge(rule.min))
        if rule.max is not None:
            checks.append(pa.Check.le(rule.max))
        if rule.allowed is not None:
            checks.append(pa.Check.isin(_typed_allowed(rule)))
        if rule.regex is not None:
            checks.append(pa.Check.str_matches(rule.regex))
        columns[name] = pa.Column(POLARS_TYPES[rule.dtype], checks, nullable=rule.nullable)
    return pa.DataFrameSchema(columns, strict=False)


def _typed_allowed(rule: ColumnContract) -> list[Any]:
    values = list(rule.allowed or ())
    if rule.dtype == "str":
        return [str(v) for v in values]
    if rule.dtype == "int":
        return [int(v) for v in values]
    if rule.dtype == "float":
        return [float(v) for v in values]
    return values


def contract_problems(frame: pl.DataFrame, contract: ContractSpec) -> pl.DataFrame:
    """Every (row, column, rule) the typed frame breaks, checked by pandera."""
    import pandera.polars as pa

    present = [c for c in contract.columns if c in frame.columns]
    if frame.height == 0 or not present:
        return empty_problems()
    schema = _pandera_schema(contract, present)
    try:
        schema.validate(frame.select(present), lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases: pl.DataFrame = exc.failure_cases
    else:
        return empty_problems()
    table_level = cases.filter(pl.col("index").is_null())
    if table_level.height:
        raise AssertionError(f"contract check failed on whole columns: {table_level.to_dicts()}")
    return cases.select(
        pl.col("index").cast(pl.UInt32).alias(POS),
        pl.col("column").cast(pl.String),
        pl.col("check").cast(pl.String).alias("rule"),
        pl.col("failure_case").cast(pl.String).str.slice(0, 200).alias("value"),
    )


def describe_problems(problems: pl.DataFrame) -> pl.DataFrame:
    """One row per record: a readable reason and the rules broken."""
    return (
        problems.with_columns(
            (
                pl.lit("column '")
                + pl.col("column")
                + pl.lit("' breaks ")
                + pl.col("rule")
                + pl.lit(": got ")
                + pl.when(pl.col("value").is_null())
                .then(pl.lit("null"))
                .otherwise(pl.lit("'") + pl.col("value") + pl.lit("'"))
            ).alias("reason")
        )
        .group_by(POS, maintain_order=True)
        .agg(
            pl.col("reason").str.join("; ").alias("__reason"),
            pl.struct("column", "rule", "value").alias("__rules"),
        )
    )


@dataclass(frozen=True)
class Deduplicated:
    kept: pl.DataFrame
    duplicates: pl.DataFrame


def deduplicate(frame: pl.DataFrame, cleaning: CleaningSpec, columns: list[str]) -> Deduplicated:
    """Keep the first of rows that are equal on the subset (default: every contract column)."""
    if not cleaning.deduplicate.enabled or frame.height == 0:
        return Deduplicated(frame, frame.clear())
    subset = list(cleaning.deduplicate.subset or columns)
    first = pl.struct(subset).is_first_distinct()
    return Deduplicated(frame.filter(first), frame.filter(~first))
