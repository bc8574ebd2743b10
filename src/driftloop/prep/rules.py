"""The column contract compiled to Polars expressions, so every row is checked in one pass.

Each rule is a boolean "failed" expression over the raw string column and its typed value,
with a message naming the column, the rule and the raw value. Rule names follow pandera's
(``greater_than_or_equal_to(0.0)``, ``isin([...])``, ``str_matches('...')``,
``not_nullable``), and a test checks that these expressions flag exactly the rows pandera's
own data checks flag. Why not call pandera directly: its Polars backend collects the whole
frame to validate it, which the streaming engine cannot do in bounded memory (see
docs/architecture.md); pandera still checks the schema of every output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from driftloop.core.spec import ColumnContract, ContractSpec

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
VALUE_CHARS = 200
PARSED = "__parsed_"  # each contract column parsed once into this column, then reused


@dataclass(frozen=True)
class Rule:
    """One contract rule on one column: where it fails, and how to say so."""

    column: str
    name: str
    failed: pl.Expr  # True where the row breaks the rule, never null
    # A warning rule (an allowed list with ``new_values: report``, a ``plausible`` range
    # that is not strict): a row that breaks it is kept and scored, and the break reported.
    warn: bool = False

    def message(self) -> pl.Expr:
        raw = pl.col(self.column)
        value = (
            pl.when(raw.is_null())
            .then(pl.lit("null"))
            .otherwise(pl.lit("'") + raw.str.slice(0, VALUE_CHARS) + pl.lit("'"))
        )
        text = pl.lit(f"{self.label}: got ") + value
        return pl.when(self.failed).then(text)

    @property
    def label(self) -> str:
        """The rule without the value, e.g. ``column 'x' breaks not_nullable``."""
        return f"column '{self.column}' breaks {self.name}"


def parsed(name: str, rule: ColumnContract) -> pl.Expr:
    """The raw string column parsed to the contract's type; null where it does not parse."""
    raw = pl.col(name)
    match rule.dtype:
        case "str":
            out = raw
        case "float":
            out = raw.cast(pl.Float64, strict=False)
        case "int":
            # "12.0" (ints written by tools that store them as floats) is 12; "12.5" is not an int
            dotted = raw.str.contains(".", literal=True)
            whole = pl.when(dotted).then(raw.str.strip_chars_end("0").str.strip_suffix("."))
            out = whole.otherwise(raw).cast(pl.Int64, strict=False)
        case "bool":
            low = raw.str.to_lowercase()
            out = pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False)
        case "date":
            out = raw.str.to_date(rule.format, strict=False, cache=False)
        case "datetime":
            out = raw.str.to_datetime(rule.format, time_unit="us", strict=False, cache=False)
    return out.cast(POLARS_TYPES[rule.dtype]).alias(name)


def with_parsed(frame: pl.LazyFrame, contract: ContractSpec, columns: list[str]) -> pl.LazyFrame:
    """Add the parsed value of every contract column (``__parsed_<column>``) to the frame."""
    return frame.with_columns(parsed(c, contract.columns[c]).alias(PARSED + c) for c in columns)


def typed(name: str, rule: ColumnContract, fill: Any = None) -> pl.Expr:
    """The typed value as it reaches data/processed: parsed, then imputed where missing.

    Needs the columns :func:`with_parsed` adds.
    """
    expr = pl.col(PARSED + name)
    if fill is not None:
        expr = expr.fill_null(pl.lit(fill).cast(POLARS_TYPES[rule.dtype]))
    return expr.alias(name)


def typed_allowed(rule: ColumnContract) -> list[Any]:
    values = list(rule.allowed or ())
    if rule.dtype == "str":
        return [str(v) for v in values]
    if rule.dtype == "int":
        return [int(v) for v in values]
    if rule.dtype == "float":
        return [float(v) for v in values]
    return values


def _number(value: float, dtype: str) -> float | int:
    return int(value) if dtype == "int" and float(value).is_integer() else float(value)


def column_rules(
    name: str, rule: ColumnContract, *, fill: Any = None, max_length: int
) -> list[Rule]:
    """Every rule of one column, in the order a reader fixes them (needs :func:`with_parsed`)."""
    raw = pl.col(name)
    value = typed(name, rule, fill)
    unparsable = raw.is_not_null() & pl.col(PARSED + name).is_null()
    fmt = f", {rule.format}" if rule.format else ""
    rules = [
        Rule(
            name, f"max_field_length({max_length})", raw.str.len_bytes().fill_null(0) > max_length
        ),
        Rule(name, f"dtype({rule.dtype}{fmt})", unparsable),
    ]
    checked = ~unparsable

    def failing(test: pl.Expr) -> pl.Expr:  # a value that parsed and breaks the test
        return (checked & value.is_not_null() & ~test).fill_null(False)

    if not rule.nullable:
        rules.append(Rule(name, "not_nullable", checked & value.is_null()))
    if rule.min is not None:
        low = _number(rule.min, rule.dtype)
        rules.append(Rule(name, f"greater_than_or_equal_to({float(low)})", failing(value >= low)))
    if rule.max is not None:
        high = _number(rule.max, rule.dtype)
        rules.append(Rule(name, f"less_than_or_equal_to({float(high)})", failing(value <= high)))
    if rule.allowed is not None:
        allowed = typed_allowed(rule)
        rules.append(
            Rule(
                name,
                f"isin({allowed})",
                failing(value.is_in(allowed)),
                warn=rule.new_values == "report",
            )
        )
    if rule.plausible is not None:
        lo, hi = rule.plausible.min, rule.plausible.max
        test = pl.lit(True)
        if lo is not None:
            test = test & (value >= lo)
        if hi is not None:
            test = test & (value <= hi)
        rules.append(
            Rule(name, plausible_label(lo, hi), failing(test), warn=not rule.plausible.strict)
        )
    if rule.regex is not None:
        pattern = rule.regex if rule.regex.startswith("^") else f"^{rule.regex}"
        rules.append(
            Rule(name, f"str_matches('{rule.regex}')", failing(value.str.contains(pattern)))
        )
    return rules


def plausible_label(lo: float | None, hi: float | None) -> str:
    """The plausible-range rule's name, pandera's ``in_range`` (an open side is infinite)."""
    low = float("-inf") if lo is None else float(lo)
    high = float("inf") if hi is None else float(hi)
    return f"in_range({low}, {high})"


def contract_rules(
    contract: ContractSpec, columns: list[str], fills: dict[str, Any], *, warn: bool = False
) -> list[Rule]:
    """The rules that quarantine a row (``warn=False``), or the warning rules (``warn=True``)."""
    return [
        r
        for c in columns
        for r in column_rules(
            c, contract.columns[c], fill=fills.get(c), max_length=contract.max_field_length
        )
        if r.warn == warn
    ]


def within_contract(name: str, rule: ColumnContract) -> pl.Expr:
    """Typed values of a column that satisfy its own range and allowed-values rules."""
    value = parsed(name, rule)
    ok = value.is_not_null()
    if rule.min is not None:
        ok = ok & (value >= rule.min)
    if rule.max is not None:
        ok = ok & (value <= rule.max)
    if rule.allowed is not None and rule.new_values == "reject":
        ok = ok & value.is_in(typed_allowed(rule))
    return ok


def pandera_schema(contract: ContractSpec, columns: list[str]) -> Any:
    """The same contract as a pandera DataFrameSchema (the reference the rules agree with)."""
    import pandera.polars as pa

    out = {}
    for name in columns:
        rule = contract.columns[name]
        checks = []
        if rule.min is not None:
            checks.append(pa.Check.ge(_number(rule.min, rule.dtype)))
        if rule.max is not None:
            checks.append(pa.Check.le(_number(rule.max, rule.dtype)))
        if rule.allowed is not None and rule.new_values == "reject":
            checks.append(pa.Check.isin(typed_allowed(rule)))
        if rule.plausible is not None and rule.plausible.strict:
            lo, hi = rule.plausible.min, rule.plausible.max
            checks.append(
                pa.Check.in_range(
                    float("-inf") if lo is None else lo, float("inf") if hi is None else hi
                )
            )
        if rule.regex is not None:
            checks.append(pa.Check.str_matches(rule.regex))
        out[name] = pa.Column(POLARS_TYPES[rule.dtype], checks, nullable=rule.nullable)
    return pa.DataFrameSchema(out, strict=False)
