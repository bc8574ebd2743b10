"""Cleaning steps around the contract check: null markers."""

from __future__ import annotations

import polars as pl
import pytest

from driftloop.core.spec import CsvOptions
from driftloop.prep.contract import normalize_strings

VALUES = ["", " ", "NA", " NA ", "x", " x ", None]


@pytest.mark.parametrize(
    ("nulls", "trim", "expected"),
    [
        (("",), False, [None, " ", "NA", " NA ", "x", " x ", None]),
        (("",), True, [None, None, "NA", "NA", "x", "x", None]),
        (("", "NA"), False, [None, " ", None, " NA ", "x", " x ", None]),
        (("", "NA"), True, [None, None, None, None, "x", "x", None]),
        (("NA",), False, ["", " ", None, " NA ", "x", " x ", None]),
        (("NA",), True, ["", "", None, None, "x", "x", None]),
        ((), False, ["", " ", "NA", " NA ", "x", " x ", None]),
    ],
)
def test_null_markers_become_nulls(
    nulls: tuple[str, ...], trim: bool, expected: list[object]
) -> None:
    frame = pl.LazyFrame({"v": VALUES, "__row": list(range(len(VALUES)))})
    out = normalize_strings(frame, CsvOptions(null_values=nulls), trim=trim).collect()
    assert out.get_column("v").to_list() == expected
    assert out.get_column("__row").to_list() == list(range(len(VALUES)))  # lineage untouched
