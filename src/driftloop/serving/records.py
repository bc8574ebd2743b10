"""Requests at the edge: JSON records checked against the model's contract, the way prep does.

A request's records go through two checks. The first, per request, is structural and cheap:
the body is an object or a list of objects, every field is a contract column, every JSON
value has a type the column can hold, and required fields are present. The second runs
per micro-batch, on many requests at once: the values are turned back into the text a raw
file would hold and go through prep's own trimming, null markers, parsing and compiled
contract rules (:mod:`driftloop.prep.rules`), so a record is accepted by ``/predict``
exactly when the same row in a raw file would reach ``data/processed``. Pure functions and
values; nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from driftloop.core.spec import ColumnContract, Spec, did_you_mean
from driftloop.prep.contract import normalized
from driftloop.prep.rules import PARSED, Rule, column_rules, parsed, typed, with_parsed

UnknownCategory = Literal["reject", "flag"]
_JSON_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "date": "a date as text",
    "datetime": "a date-time as text",
}


@dataclass(frozen=True)
class Problem:
    """One reason a record is refused, in FastAPI's 422 ``detail`` shape."""

    loc: tuple[str | int, ...]
    msg: str
    type: str
    input: Any = None

    def as_detail(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type, "input": self.input}


class RequestShapeError(Exception):
    """The body is not one record or a list of records; carries the problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.msg for p in problems))
        self.problems = problems


@dataclass
class Checked:
    """The outcome of the contract check for a micro-batch of records."""

    # one row per record (refused records too), model columns; None when the row path
    # (rowpath.py) scored the batch: it builds no frame
    features: pl.DataFrame | None
    # the records as typed contract columns (what the prediction log keeps), or None while
    # only ``typed_rows`` hold them (the row path: the frame is built for the log, after
    # the answer)
    typed_frame: pl.DataFrame | None
    problems: dict[int, list[Problem]]  # record position -> why it is refused
    flags: dict[int, list[str]]  # record position -> accepted with these remarks
    typed_rows: list[dict[str, Any]] | None = None
    schema: dict[str, pl.DataType] | None = None

    @property
    def typed(self) -> pl.DataFrame:
        if self.typed_frame is None:
            self.typed_frame = pl.DataFrame(self.typed_rows or [], schema=self.schema)
        return self.typed_frame


@dataclass
class RequestContract:
    """The contract of one model, compiled for requests.

    Build it once per loaded model (:meth:`from_spec`); :meth:`records` checks a body's
    structure, :meth:`check` runs the contract rules and the feature function on a batch.
    """

    spec: Spec
    columns: dict[str, ColumnContract]  # the request's fields: contract columns minus target
    required: frozenset[str]
    null_markers: list[str]
    unknown_category: UnknownCategory
    rules: list[Rule] = field(default_factory=list)
    fills: dict[str, Any] = field(default_factory=dict)
    _steps: tuple[list[pl.Expr], ...] = field(default=(), repr=False)
    _builtins: list[pl.Expr] = field(default_factory=list, repr=False)

    @classmethod
    def from_spec(cls, spec: Spec, unknown_category: UnknownCategory = "reject") -> RequestContract:
        columns = {n: c for n, c in spec.contract.columns.items() if n != spec.target}
        imputed = dict(spec.cleaning.impute)
        # Prep fills a constant before the not-null rule; a statistic (mean, median, mode) was
        # computed per training batch and is not known here, so such a column may be null and
        # the model's own missing-value handling takes it.
        fills = {
            n: r.value for n, r in imputed.items() if r.strategy == "constant" and n in columns
        }
        required = frozenset(n for n, c in columns.items() if not c.nullable and n not in imputed)
        rules = [
            r
            for n, c in columns.items()
            for r in column_rules(
                n, c, fill=fills.get(n), max_length=spec.contract.max_field_length
            )
            if not (r.name == "not_nullable" and n in imputed)
        ]
        markers = sorted({m for s in spec.sources for m in s.csv.null_values})
        contract = cls(spec, columns, required, markers, unknown_category, rules, fills)
        contract._compile()
        return contract

    def _compile(self) -> None:
        """Build the check's Polars expressions once (building them costs more than running
        them on a small batch)."""
        from driftloop.features.compute import builtin_expressions

        names = list(self.columns)
        normalize = normalized(names, self.null_markers, trim=self.spec.cleaning.trim_strings)
        parse = [parsed(n, c).alias(PARSED + n) for n, c in self.columns.items()]
        select = [
            *[typed(n, c, self.fills.get(n)) for n, c in self.columns.items()],
            *[r.failed.alias(f"__rule_{i}") for i, r in enumerate(self.rules)],
            *[pl.col(n).alias(f"__raw_{n}") for n in names],
        ]
        # Typed values are also kept under another name: features may drop (features.exclude)
        # or replace a column, and the prediction log keeps the record as it arrived.
        kept = [pl.col(n).alias(f"__typed_{n}") for n in names]
        self._steps = (normalize, parse, select, kept)
        self._builtins = builtin_expressions(self.spec.features)

    # -- structure (per request, on the event loop) ---------------------------------------

    def records(self, body: Any) -> list[dict[str, str | None]]:
        """A parsed JSON body as records of raw text; raises :class:`RequestShapeError`."""
        if isinstance(body, dict):
            items: list[Any] = [body]
            at: tuple[str | int, ...] = ("body",)
            single = True
        elif isinstance(body, list) and body:
            items, single = body, False
        else:
            raise RequestShapeError(
                [
                    Problem(
                        ("body",),
                        "expected one record (a JSON object of the contract's columns) or a "
                        "non-empty list of records",
                        "body_shape",
                    )
                ]
            )
        out: list[dict[str, str | None]] = []
        problems: list[Problem] = []
        for i, item in enumerate(items):
            at = ("body",) if single else ("body", i)
            if not isinstance(item, dict):
                problems.append(
                    Problem(at, "expected a JSON object of the contract's columns", "record_shape")
                )
                continue
            text, found = self._record(item, at)
            problems += found
            out.append(text)
        if problems:
            raise RequestShapeError(problems)
        return out

    def _record(
        self, item: dict[str, Any], at: tuple[str | int, ...]
    ) -> tuple[dict[str, str | None], list[Problem]]:
        problems: list[Problem] = []
        text: dict[str, str | None] = {}
        for name, value in item.items():
            rule = self.columns.get(name)
            if rule is None:
                if self.spec.contract.extra_columns == "drop":
                    continue
                problems.append(self._unknown_field(name, value, at))
                continue
            if value is None:
                text[name] = None
                continue
            raw = _as_text(value, rule.dtype)
            if raw is None:
                problems.append(
                    Problem(
                        (*at, name),
                        f"column '{name}' expects {_JSON_KINDS[rule.dtype]} "
                        f"(contract dtype {rule.dtype}); got {type(value).__name__} {value!r:.80}",
                        f"dtype({rule.dtype})",
                        value,
                    )
                )
                continue
            text[name] = raw
        for name in self.required:
            if text.get(name) is None and (*at, name) not in {p.loc for p in problems}:
                problems.append(
                    Problem(
                        (*at, name),
                        f"column '{name}' is required (contract: nullable false); add it",
                        "not_nullable",
                    )
                )
        return text, problems

    def _unknown_field(self, name: str, value: Any, at: tuple[str | int, ...]) -> Problem:
        if name == self.spec.target:
            msg = (
                f"'{name}' is the target, not an input; send true labels to /feedback with "
                "the request_id"
            )
        else:
            hint = did_you_mean(name, list(self.columns))
            msg = f"'{name}' is not a column of the contract (contract.columns){hint}"
        return Problem((*at, name), msg, "extra_forbidden", value)

    # -- contract rules and features (per micro-batch, off the event loop) ----------------

    def check(self, records: list[dict[str, str | None]], user_function: Any = None) -> Checked:
        """Prep's rules and the feature function over a batch of records, in one query."""
        from driftloop.features.compute import build_features

        names = list(self.columns)
        normalize, parse, select, kept = self._steps
        raw = pl.DataFrame(
            {n: [r.get(n) for r in records] for n in names},
            schema=dict.fromkeys(names, pl.String),
        )
        checked = raw.lazy().with_columns(normalize).with_columns(parse).select(select)
        checked = checked.with_columns(kept)
        if user_function is None:
            # Built-ins only add columns: one query checks the rules and builds the features.
            frame = build_features(checked, self.spec, builtins=self._builtins).collect()
        else:
            # A user's function may select columns: it sees the typed columns alone.
            frame = checked.collect()
            user = build_features(frame.select(names).lazy(), self.spec, user_function)
            frame = pl.concat([user.collect(), frame.select(pl.exclude(names))], how="horizontal")
        typed_frame = pl.DataFrame([frame.get_column(f"__typed_{n}").alias(n) for n in names])
        rule_cols = [f"__rule_{i}" for i in range(len(self.rules))]
        problems: dict[int, list[Problem]] = {}
        flags: dict[int, list[str]] = {}
        if rule_cols:
            failed_rows = np.flatnonzero(frame.select(rule_cols).to_numpy().any(axis=1))
            for row in failed_rows.tolist():
                self._explain(frame, row, rule_cols, problems, flags)
        internal = ("__rule_", "__raw_", "__typed_")
        features = pl.DataFrame([s for s in frame.get_columns() if not s.name.startswith(internal)])
        return Checked(features, typed_frame, problems, flags)

    def _explain(
        self,
        frame: pl.DataFrame,
        row: int,
        rule_cols: list[str],
        problems: dict[int, list[Problem]],
        flags: dict[int, list[str]],
    ) -> None:
        values = frame.row(row, named=True)
        for rule, col in zip(self.rules, rule_cols, strict=True):
            if not values[col]:
                continue
            given = values[f"__raw_{rule.column}"]
            msg = f"{rule.label}: got {'null' if given is None else repr(given)}"
            if rule.warn:  # an open allowed list, a plausible range: scored, and said
                kind = "new value" if rule.name.startswith("isin(") else "outlier"
                flags.setdefault(row, []).append(f"{kind}: {msg}")
                continue
            if rule.name.startswith("isin(") and self.unknown_category == "flag":
                flags.setdefault(row, []).append(f"unknown category: {msg}")
                continue
            loc = ("body", row, rule.column)  # the batch position; the batcher relocates it
            problems.setdefault(row, []).append(Problem(loc, msg, rule.name, given))

    def label_text(self, value: Any) -> str | None:
        """A /feedback label as text in the target's contract type, or None if it is not."""
        rule = self.spec.contract.columns[self.spec.target]
        return _as_text(value, rule.dtype) if value is not None else None


def _as_text(value: Any, dtype: str) -> str | None:
    """A JSON value as a raw file would hold it, or None when its JSON type cannot fit."""
    if isinstance(value, bool):
        return ("true" if value else "false") if dtype == "bool" else None
    if isinstance(value, int):
        return str(value) if dtype in ("int", "float") else None
    if isinstance(value, float):
        if dtype == "float" and math.isfinite(value):
            return repr(value)
        if dtype == "int" and value.is_integer():
            return str(int(value))
        return None
    if isinstance(value, str):
        return value if dtype in ("str", "date", "datetime") else None
    return None


def record_schema(spec: Spec) -> dict[str, Any]:
    """The JSON schema of one /predict record, from the contract (for the OpenAPI document)."""
    kinds = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}
    properties: dict[str, Any] = {}
    required = []
    for name, rule in spec.contract.columns.items():
        if name == spec.target:
            continue
        prop: dict[str, Any] = {"type": kinds.get(rule.dtype, "string")}
        if rule.dtype in ("date", "datetime"):
            fmt = rule.format or ("%Y-%m-%d" if rule.dtype == "date" else "%Y-%m-%d %H:%M:%S")
            prop["description"] = f"{rule.dtype} as text, format {fmt}"
        if rule.min is not None:
            prop["minimum"] = rule.min
        if rule.max is not None:
            prop["maximum"] = rule.max
        if rule.allowed is not None and rule.new_values == "reject":
            prop["enum"] = list(rule.allowed)
        elif rule.allowed is not None:  # open: a new value is scored and reported
            prop["examples"] = list(rule.allowed)
        if rule.regex is not None:
            prop["pattern"] = rule.regex
        if rule.nullable or name in spec.cleaning.impute:
            prop = {"anyOf": [prop, {"type": "null"}]}
        else:
            required.append(name)
        properties[name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": spec.contract.extra_columns == "drop",
    }


def check_labels(spec: Spec, labels: list[Any]) -> tuple[list[str | None], list[Problem]]:
    """/feedback labels as text in the target's contract, or the problems (with positions)."""
    name = spec.target
    rule = spec.contract.columns[name]
    texts: list[str | None] = []
    problems: list[Problem] = []
    for i, value in enumerate(labels):
        text = _as_text(value, rule.dtype) if value is not None else None
        if text is None:
            problems.append(
                Problem(
                    ("body", i, "label"),
                    f"label for target '{name}' must be {_JSON_KINDS[rule.dtype]} "
                    f"(contract dtype {rule.dtype}); got {value!r:.80}",
                    f"dtype({rule.dtype})",
                    value,
                )
            )
        texts.append(text)
    if problems:
        return texts, problems
    frame = with_parsed(
        pl.LazyFrame({name: texts}, schema={name: pl.String}), spec.contract, [name]
    )
    rules = column_rules(name, rule, max_length=spec.contract.max_field_length)
    failed = frame.select([r.failed.alias(str(k)) for k, r in enumerate(rules)]).collect()
    for k, r in enumerate(rules):
        for i in failed.get_column(str(k)).arg_true().to_list():
            problems.append(
                Problem(("body", i, "label"), f"{r.label}: got {texts[i]!r}", r.name, labels[i])
            )
    return texts, problems


def request_records(frame: pl.DataFrame, spec: Spec) -> list[dict[str, Any]]:
    """Typed rows (as prep writes them) as the JSON records a client sends to /predict:
    the contract's columns without the target, dates as text in the contract's format."""
    import datetime as dt

    columns = [c for c in spec.contract.columns if c != spec.target and c in frame.columns]
    out = []
    for row in frame.select(columns).iter_rows(named=True):
        record: dict[str, Any] = {}
        for name, value in row.items():
            rule = spec.contract.columns[name]
            if isinstance(value, dt.datetime):
                value = value.strftime(rule.format or "%Y-%m-%d %H:%M:%S")
            elif isinstance(value, dt.date):
                value = value.strftime(rule.format or "%Y-%m-%d")
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            record[name] = value
        out.append(record)
    return out
