"""What prep notices without quarantining: values new to an open ``allowed`` list, outliers.

A contract ``init`` guessed from one sample cannot know next year's values. A column whose
list is open (``new_values: report``) keeps a row with a value the list does not name; a
``plausible`` range that is not strict keeps a row outside it. Both are warning rules
(:attr:`driftloop.prep.rules.Rule.warn`): the kept rows are scored, and this module says
what they held, from the batch's processed rows, so the prep manifest, ``driftloop run``,
the ``ContractChangeProposed`` event and ``driftloop status`` can report it. Pure: a frame
in, values out.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from driftloop.core.spec import ColumnContract, Spec
from driftloop.prep.rules import plausible_label, typed_allowed

MAX_VALUES = 20  # distinct new values listed per column; the rest are counted
_SPACES = re.compile(r"\s+")


def canonical(value: Any) -> str:
    """A value with casing and runs of whitespace folded: ``' Light  Snow'`` -> ``light snow``."""
    return _SPACES.sub(" ", str(value).strip()).casefold()


def new_values(frame: pl.LazyFrame, spec: Spec) -> list[dict[str, Any]]:
    """Per open column, the values its ``allowed`` list does not name, with their rows.

    A value that equals a listed one once casing and whitespace are folded is reported as a
    variant of it (``variant_of``): the same label spelt differently upstream, which the user
    may prefer to fix at the source rather than add.
    """
    columns = {
        n: c
        for n, c in spec.contract.columns.items()
        if c.allowed is not None and c.new_values == "report"
    }
    if not columns:
        return []
    have = frame.collect_schema().names()
    queries = {
        name: frame.select(pl.col(name))
        .filter(pl.col(name).is_not_null() & ~pl.col(name).is_in(typed_allowed(rule)))
        .group_by(name)
        .len()
        .sort(["len", name], descending=[True, False])
        for name, rule in columns.items()
        if name in have
    }
    found = dict(zip(queries, pl.collect_all(list(queries.values())), strict=True))
    out = []
    for name, counted in found.items():
        if counted.height == 0:
            continue
        out.append(_column_report(name, columns[name], counted))
    return out


def _column_report(name: str, rule: ColumnContract, counted: pl.DataFrame) -> dict[str, Any]:
    listed = typed_allowed(rule)
    by_canonical = {canonical(v): v for v in listed}
    values = []
    for value, rows in counted.rows()[:MAX_VALUES]:
        values.append(
            {"value": value, "rows": rows, "variant_of": by_canonical.get(canonical(value))}
        )
    new = [v["value"] for v in values if v["variant_of"] is None]
    proposed = sorted([*listed, *new], key=str)
    return {
        "column": name,
        "rows": int(counted.get_column("len").sum()),
        "distinct": counted.height,
        "values": values,
        "proposed": {
            "key": f"contract.columns.{name}.allowed",
            "allowed": proposed,
        },
    }


def outliers(frame: pl.LazyFrame, spec: Spec) -> list[dict[str, Any]]:
    """Per column with a plausible range that is not strict: how many kept values fall
    outside it, on which side, and the most extreme ones seen."""
    columns = {
        n: c
        for n, c in spec.contract.columns.items()
        if c.plausible is not None and not c.plausible.strict
    }
    have = frame.collect_schema().names()
    aggs = []
    for name, rule in columns.items():
        if name not in have:
            continue
        assert rule.plausible is not None
        lo, hi = rule.plausible.min, rule.plausible.max
        col = pl.col(name)
        below = (col < lo) if lo is not None else pl.lit(False)
        above = (col > hi) if hi is not None else pl.lit(False)
        aggs += [
            below.sum().alias(f"{name}\x00below"),
            above.sum().alias(f"{name}\x00above"),
            col.min().alias(f"{name}\x00min"),
            col.max().alias(f"{name}\x00max"),
        ]
    if not aggs:
        return []
    row = frame.select(aggs).collect().row(0, named=True)
    out = []
    for name, rule in columns.items():
        if f"{name}\x00below" not in row:
            continue
        assert rule.plausible is not None
        n_below, n_above = int(row[f"{name}\x00below"] or 0), int(row[f"{name}\x00above"] or 0)
        if n_below + n_above == 0:
            continue
        lo, hi = rule.plausible.min, rule.plausible.max
        out.append(
            {
                "column": name,
                "rule": plausible_label(lo, hi),
                "rows": n_below + n_above,
                "below": n_below,
                "above": n_above,
                "lowest": row[f"{name}\x00min"] if n_below else None,
                "highest": row[f"{name}\x00max"] if n_above else None,
            }
        )
    return out


def describe_new_values(item: dict[str, Any]) -> str:
    """One line for a column's new values, as ``run`` and ``status`` print it."""
    parts = []
    for v in item["values"]:
        text = f"{v['value']!r} ({v['rows']} row(s)"
        text += f", a casing/whitespace variant of {v['variant_of']!r})" if v["variant_of"] else ")"
        parts.append(text)
    more = item["distinct"] - len(item["values"])
    if more > 0:
        parts.append(f"... {more} more")
    return f"column '{item['column']}': new value(s) {', '.join(parts)}"


def describe_outliers(item: dict[str, Any]) -> str:
    """One line for a column's outliers."""
    seen = []
    if item["below"]:
        seen.append(f"{item['below']} below (lowest {item['lowest']!r})")
    if item["above"]:
        seen.append(f"{item['above']} above (highest {item['highest']!r})")
    return f"column '{item['column']}' outside {item['rule']}: {', '.join(seen)}"
