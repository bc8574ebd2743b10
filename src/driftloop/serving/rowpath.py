r"""The row-wise scoring path: a few clean records through contract, features and trees in Python.

The Polars path (:meth:`RequestContract.check`, then the compiled pipeline) builds frames
for every micro-batch; for one record that costs milliseconds, while the trees take
microseconds. This path does the same work on plain Python values for the records it is
*sure* about, and declines the rest:

- a value is parsed only when it matches a conservative grammar both paths read the same
  way (``-12.5e3`` for a float, ``12`` or ``12.0`` for an int, ``yes``/``0`` for a bool,
  zero-padded dates in the column's format; text that starts or ends with whitespace or a
  non-ASCII character is declined when strings are trimmed);
- a record is taken only when it passes every rule of its contract with no remark: any
  broken rule, any new category or outlier to report, sends the whole micro-batch to the
  Polars path, which writes the refusal or the flags exactly as before;
- features: the built-ins (date parts, ratios, log1p, buckets) are computed row-wise; a
  model with a user's feature function (Polars code over a frame, which cannot run on a
  dict) has no row path, and neither has a contract with a ``regex`` rule beyond what
  Python's and Rust's regular expressions read alike (literals, classes, groups,
  quantifiers, anchors, ``\d \w \s``: on printable ASCII values only; other values are
  declined), nor a model served by scikit-learn.

Declining is always safe: the caller then takes the Polars path. The property tests
(tests/test_rowpath.py) check that whatever this path accepts, the Polars path accepts with
the same typed values, features and predictions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from driftloop.core.spec import ColumnContract
from driftloop.prep.rules import typed_allowed

ROW_LIMIT = 16  # micro-batches up to this many records take the row path
_TRUE = frozenset(["true", "t", "yes", "y", "1"])
_FALSE = frozenset(["false", "f", "no", "n", "0"])
_FLOAT = re.compile(r"-?(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:[eE][+-]?\d{1,3})?")
_INT = re.compile(r"-?\d{1,18}(?:\.0*)?")
_DIRECTIVES = {"%Y": r"(\d{4})", "%m": r"(\d{2})", "%d": r"(\d{2})"}
_TIME_DIRECTIVES = {"%H": r"(\d{2})", "%M": r"(\d{2})", "%S": r"(\d{2})"}
_DATE_PARTS: dict[str, Callable[[Any], int]] = {
    "year": lambda v: v.year,
    "quarter": lambda v: (v.month - 1) // 3 + 1,
    "month": lambda v: v.month,
    "day": lambda v: v.day,
    "weekday": lambda v: v.isoweekday(),
    "dayofyear": lambda v: v.timetuple().tm_yday,
    "hour": lambda v: v.hour,
    "minute": lambda v: v.minute,
}


class Declined(Exception):  # noqa: N818 - a control signal, not an error
    """This record needs the Polars path."""


Parser = Callable[[str], Any]


def _parse_float(text: str) -> float:
    if _FLOAT.fullmatch(text) is None:
        raise Declined
    value = float(text)
    if not math.isfinite(value):
        raise Declined
    return value


def _parse_int(text: str) -> int:
    if _INT.fullmatch(text) is None:
        raise Declined
    value = int(text.partition(".")[0])
    if not -(2**63) <= value < 2**63:
        raise Declined
    return value


def _parse_bool(text: str) -> bool:
    low = text.lower() if text.isascii() else ""
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise Declined


def _date_parser(fmt: str | None, dtype: str) -> Parser | None:
    """A parser for zero-padded values of ``fmt`` (None: the ISO forms Polars infers)."""
    if fmt is None:
        fmts = ["%Y-%m-%d"] if dtype == "date" else ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]
    else:
        fmts = [fmt]
    allowed = dict(_DIRECTIVES)
    if dtype == "datetime":
        allowed.update(_TIME_DIRECTIVES)
    patterns = []
    for f in fmts:
        parts = re.split(r"(%.)", f)
        order = [p for p in parts if p.startswith("%")]
        if any(p not in allowed for p in order) or len(set(order)) != len(order):
            return None
        if not {"%Y", "%m", "%d"} <= set(order):
            return None
        if dtype == "datetime" and not {"%H", "%M", "%S"} <= set(order):
            return None
        if any("%" in p for p in parts if not p.startswith("%")):
            return None
        regex = "".join(allowed[p] if p.startswith("%") else re.escape(p) for p in parts)
        patterns.append((re.compile(regex), order))

    def parse(text: str) -> Any:
        for pattern, order in patterns:
            m = pattern.fullmatch(text)
            if m is None:
                continue
            v = dict(zip(order, map(int, m.groups()), strict=True))
            try:
                if dtype == "date":
                    return date(v["%Y"], v["%m"], v["%d"])
                return datetime(v["%Y"], v["%m"], v["%d"], v["%H"], v["%M"], v["%S"])
            except ValueError:
                raise Declined from None
        raise Declined

    return parse


@dataclass(frozen=True)
class _Column:
    name: str
    parse: Parser | None  # None: str
    fill: Any
    nullable: bool
    low: Any
    high: Any
    allowed: frozenset[Any] | None
    plausible: tuple[float | None, float | None] | None
    pattern: re.Pattern[str] | None = None  # the regex rule (searched as Polars does)


@dataclass
class RowPath:
    """A model's request path on Python values; build with :func:`row_path`."""

    columns: list[_Column]
    markers: frozenset[str]
    empty_is_null: bool
    trim: bool
    max_bytes: int
    features: list[tuple[str, Callable[[dict[str, Any]], Any]]]
    matrix: list[tuple[str, dict[str, float] | None]]  # (feature, category codes or None)
    forest: Any
    classes: list[str] | None

    def typed(self, record: dict[str, str | None]) -> dict[str, Any]:
        """The record's typed contract values, or :class:`Declined`."""
        out: dict[str, Any] = {}
        for c in self.columns:
            text = record.get(c.name)
            if text is not None:
                if (
                    self.trim
                    and text
                    and (not 32 < ord(text[0]) < 127 or not 32 < ord(text[-1]) < 127)
                ):
                    raise Declined  # leading/trailing space: trimming rules differ at the edges
                if len(text) * 4 > self.max_bytes and len(text.encode()) > self.max_bytes:
                    raise Declined
                if (self.empty_is_null and not text) or text in self.markers:
                    text = None
            value: Any = text if text is None or c.parse is None else c.parse(text)
            if value is None:
                value = c.fill
                if value is None:
                    if not c.nullable:
                        raise Declined
                    out[c.name] = None
                    continue
            if c.low is not None and not value >= c.low:
                raise Declined
            if c.high is not None and not value <= c.high:
                raise Declined
            if c.allowed is not None and value not in c.allowed:
                raise Declined
            if c.plausible is not None:
                lo, hi = c.plausible
                if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
                    raise Declined
            if c.pattern is not None and not (
                value.isascii() and value.isprintable() and c.pattern.search(value)
            ):
                raise Declined
            out[c.name] = value
        return out

    def row(self, typed: dict[str, Any]) -> list[float]:
        """The model's input row for typed values (features computed on a copy)."""
        values = dict(typed)
        for name, feature in self.features:
            values[name] = feature(values)
        out = []
        for name, codes in self.matrix:
            v = values.get(name)
            if codes is not None:
                out.append(codes.get(v, math.nan) if isinstance(v, str) else math.nan)
            elif v is None:
                out.append(math.nan)
            else:
                out.append(float(v))
        return out

    def score(self, records: list[dict[str, str | None]]) -> tuple[list[dict[str, Any]], Any, Any]:
        """(typed records, labels, probabilities) or :class:`Declined`."""
        import treelite.gtil

        typed = [self.typed(r) for r in records]
        x = np.array([self.row(t) for t in typed], dtype=np.float64)
        out = np.asarray(treelite.gtil.predict(self.forest, x, nthread=1)).reshape(x.shape[0], -1)
        if self.classes is None:
            return typed, out[:, 0], None
        if len(self.classes) == 2:
            positive = out[:, 0]
            proba = np.column_stack([1.0 - positive, positive])
        else:
            proba = out
        return typed, np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)], proba


def row_path(contract: Any, compiled: Any, user_function: Any) -> tuple[RowPath | None, str]:
    """The row path for a served model (a RequestContract and its CompiledPipeline, or None
    when scikit-learn serves it), or None and the reason there is none."""
    if compiled is None:
        return None, "the model is served by scikit-learn (no compiled path)"
    if user_function is not None:
        return None, "a user feature function runs on Polars frames: every batch takes Polars"
    spec = contract.spec
    columns = []
    for name, rule in contract.columns.items():
        # a column imputed with a statistic may arrive null: the model takes the missing value
        nullable = rule.nullable or name in spec.cleaning.impute
        column, why = _column(name, rule, contract.fills.get(name), nullable)
        if column is None:
            return None, f"column '{name}': {why}"
        columns.append(column)
    dtypes = {n: r.dtype for n, r in contract.columns.items()}
    features, why = _features(spec.features, dtypes)
    if features is None:
        return None, why
    made = {**dtypes, **{n: kind for n, _, kind in features}}
    for name in spec.features.exclude:
        made.pop(name, None)
    matrix: list[tuple[str, dict[str, float] | None]] = []
    for item in compiled.layout:
        name = item["column"]
        kind = made.get(name)
        if "categories" in item:
            if kind != "str":
                return None, f"model column '{name}' is a category of {kind} values"
            codes = dict(zip(item["categories"], item["codes"], strict=True))
            matrix.append((name, codes))
        elif kind in ("int", "float", "bool"):
            matrix.append((name, None))
        else:
            return None, f"model column '{name}' is a number made of {kind} values"
    path = RowPath(
        columns,
        frozenset(m for m in contract.null_markers if m != ""),
        "" in contract.null_markers,
        spec.cleaning.trim_strings,
        spec.contract.max_field_length,
        [(n, f) for n, f, _ in features],
        matrix,
        compiled.forest,
        compiled.classes,
    )
    return path, f"row-wise for micro-batches of up to {ROW_LIMIT} clean records"


# A pattern Python's ``re`` and Rust's ``regex`` (Polars) read alike on printable ASCII
# text: literals, classes, groups, alternation, quantifiers, anchors, \d \w \s and escaped
# punctuation; no flags, lookaround, POSIX or Unicode classes, word boundaries.
_PORTABLE = re.compile(r"(?:[^\\\[(]|\\[dwsDWS]|\\[^A-Za-z0-9]|\[(?!:)|\((?!\?))*")


def _column(
    name: str, rule: ColumnContract, fill: Any, nullable: bool
) -> tuple[_Column | None, str]:
    pattern = None
    if rule.regex is not None:
        if _PORTABLE.fullmatch(rule.regex) is None:
            return None, "a regex rule outside what Python's and Polars' regexes read alike"
        pattern = re.compile(rule.regex if rule.regex.startswith("^") else f"^{rule.regex}")
    parse: Parser | None
    if rule.dtype == "float":
        parse = _parse_float
    elif rule.dtype == "int":
        parse = _parse_int
    elif rule.dtype == "bool":
        parse = _parse_bool
    elif rule.dtype in ("date", "datetime"):
        parse = _date_parser(rule.format, rule.dtype)
        if parse is None:
            return None, f"format {rule.format!r} is not made of %Y %m %d %H %M %S"
    else:
        parse = None
    if fill is not None:
        fill = {"int": int, "float": float, "str": str}.get(rule.dtype, lambda v: v)(fill)
        if rule.dtype in ("date", "datetime", "bool"):
            return None, f"a constant fill of a {rule.dtype} column"
    low = high = None
    if rule.min is not None:
        low = int(rule.min) if rule.dtype == "int" and float(rule.min).is_integer() else rule.min
    if rule.max is not None:
        high = int(rule.max) if rule.dtype == "int" and float(rule.max).is_integer() else rule.max
    allowed = frozenset(typed_allowed(rule)) if rule.allowed is not None else None
    plausible = (rule.plausible.min, rule.plausible.max) if rule.plausible is not None else None
    return _Column(name, parse, fill, nullable, low, high, allowed, plausible, pattern), ""


def _features(
    spec: Any, dtypes: dict[str, str]
) -> tuple[list[tuple[str, Callable[[dict[str, Any]], Any], str]] | None, str]:
    """The built-ins as (name, function of the values so far, kind), in Polars' order."""
    out: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = []
    for column, parts in spec.datetime_parts.items():
        if dtypes.get(column) not in ("date", "datetime"):
            return None, f"datetime_parts of '{column}', a {dtypes.get(column)} column"
        for part in parts:
            if part in ("hour", "minute") and dtypes[column] == "date":
                return None, f"{part} of the date column '{column}'"
            out.append((f"{column}_{part}", _part(column, _DATE_PARTS[part]), "int"))
    numeric = ("int", "float", "bool")
    for ratio in spec.ratios:
        if (
            dtypes.get(ratio.numerator) not in numeric
            or dtypes.get(ratio.denominator) not in numeric
        ):
            return None, f"ratio '{ratio.name}' of columns that are not numbers"
        out.append((ratio.name, _ratio(ratio.numerator, ratio.denominator), "float"))
    for column in spec.logs:
        if dtypes.get(column) not in numeric:
            return None, f"log1p of '{column}', not a number"
        out.append((f"log1p_{column}", _log1p(column), "float"))
    from driftloop.features.compute import _bucket_label

    for bucket in spec.buckets:
        if dtypes.get(bucket.column) not in numeric:
            return None, f"bucket of '{bucket.column}', not a number"
        edges = [float(e) for e in bucket.edges]
        bounds = list(zip([-math.inf, *edges], [*edges, math.inf], strict=True))
        labels = [_bucket_label(lo, hi) for lo, hi in bounds]
        name = bucket.name or f"{bucket.column}_bucket"
        out.append((name, _bucketed(bucket.column, edges, labels), "str"))
    # a later built-in over a column an earlier one replaced would read the new value in
    # Python but the old one in Polars (with_columns evaluates all on the input frame)
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names) or set(names) & set(dtypes):
        return None, "a built-in feature replaces a column"
    return out, ""


def _part(column: str, get: Callable[[Any], int]) -> Callable[[dict[str, Any]], Any]:
    def feature(values: dict[str, Any]) -> Any:
        v = values[column]
        return None if v is None else get(v)

    return feature


def _ratio(num: str, den: str) -> Callable[[dict[str, Any]], Any]:
    def feature(values: dict[str, Any]) -> Any:
        n, d = values[num], values[den]
        if n is None or d is None or d == 0:
            return None
        return float(n) / float(d)

    return feature


def _log1p(column: str) -> Callable[[dict[str, Any]], Any]:
    def feature(values: dict[str, Any]) -> Any:
        v = values[column]
        return None if v is None or not v > -1 else math.log1p(float(v))

    return feature


def _bucketed(
    column: str, edges: list[float], labels: list[str]
) -> Callable[[dict[str, Any]], Any]:
    def feature(values: dict[str, Any]) -> Any:
        v = values[column]
        if v is None:
            return None
        v = float(v)
        for edge, label in zip(edges, labels, strict=False):
            if v <= edge:
                return label
        return labels[-1]

    return feature
