"""The contract at the request edge: structure per request, prep's rules per micro-batch."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from driftloop.core.spec import parse_spec, read_yaml
from driftloop.serving.records import (
    RequestContract,
    RequestShapeError,
    check_labels,
    record_schema,
)

SPEC = """
name: edge
task: classification
target: y
time_column: t
sources:
  - name: s
    path: data/raw/s/*.csv
    csv: {null_values: ["", "NA", "n/a"]}
contract:
  columns:
    t: {dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}
    n: {dtype: int, min: 0, max: 10}
    x: {dtype: float, nullable: false}
    c: {dtype: str, allowed: [red, green]}
    code: {dtype: str, regex: "[A-Z]{2}[0-9]"}
    flag: {dtype: bool}
    day: {dtype: date}
    filled: {dtype: float, nullable: false}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
cleaning:
  impute: {filled: {strategy: median}}
features:
  datetime_parts: {t: [hour]}
  logs: [x]
"""


def contract(extra: str = "", policy: str = "reject") -> RequestContract:
    spec = parse_spec(read_yaml(SPEC + extra))
    return RequestContract.from_spec(spec, policy)  # type: ignore[arg-type]


GOOD: dict[str, Any] = {
    "t": "2024-03-01 10:30:00",
    "n": 3,
    "x": 1.5,
    "c": "red",
    "code": "AB1",
    "flag": True,
    "day": "2024-03-01",
}


def problems_of(body: Any, c: RequestContract | None = None) -> list[dict[str, Any]]:
    c = c or contract()
    with pytest.raises(RequestShapeError) as info:
        c.records(body)
    return [p.as_detail() for p in info.value.problems]


def test_a_good_record_becomes_raw_text_and_passes_every_rule() -> None:
    c = contract()
    [text] = c.records(GOOD)
    assert text == {
        "t": "2024-03-01 10:30:00",
        "n": "3",
        "x": "1.5",
        "c": "red",
        "code": "AB1",
        "flag": "true",
        "day": "2024-03-01",
    }
    checked = c.check([text, text])
    assert checked.problems == {}
    assert checked.features.height == 2
    row = checked.features.row(0, named=True)
    assert row["t_hour"] == 10
    assert row["log1p_x"] == pytest.approx(0.9162907318741551)
    assert checked.typed.schema["t"] == pl.Datetime("us")
    assert checked.typed.row(0, named=True)["n"] == 3


def test_body_shapes_are_refused_with_a_location() -> None:
    for body in (None, 3, "text", []):
        [p] = problems_of(body)
        assert p["loc"] == ["body"] and p["type"] == "body_shape"
    [p] = problems_of([GOOD, 7])
    assert p["loc"] == ["body", 1] and p["type"] == "record_shape"


def test_unknown_fields_the_target_and_wrong_json_types_name_the_field() -> None:
    found = problems_of({**GOOD, "cc": "red", "y": "yes", "n": "three", "x": True})
    by_field = {p["loc"][-1]: p for p in found}
    assert "did you mean 'c'" in by_field["cc"]["msg"]
    assert by_field["cc"]["type"] == "extra_forbidden"
    assert "is the target" in by_field["y"]["msg"] and "/feedback" in by_field["y"]["msg"]
    assert by_field["n"]["type"] == "dtype(int)" and "expects an integer" in by_field["n"]["msg"]
    assert by_field["x"]["type"] == "dtype(float)"
    # positions inside a list are part of the location
    listed = problems_of([GOOD, {**GOOD, "n": 1.5}])
    assert [p["loc"] for p in listed] == [["body", 1, "n"]]


def test_required_fields_and_imputed_columns() -> None:
    body = {k: v for k, v in GOOD.items() if k != "x"}
    [p] = problems_of(body)
    assert p["loc"] == ["body", "x"] and p["type"] == "not_nullable"
    # 'filled' is not nullable but prep imputes it: a request may leave it out
    [text] = contract().records(GOOD)
    assert contract().check([text]).problems == {}


def test_extra_columns_drop_ignores_unknown_fields() -> None:
    spec = parse_spec(read_yaml(SPEC.replace("contract:\n", "contract:\n  extra_columns: drop\n")))
    c = RequestContract.from_spec(spec)
    [text] = c.records({**GOOD, "unexpected": 1})
    assert "unexpected" not in text


def test_prep_rules_run_on_the_batch_with_field_rule_and_value() -> None:
    c = contract()
    bad = [
        {**GOOD, "n": 11},
        {**GOOD, "c": "blue"},
        {**GOOD, "code": "ab1"},
        {**GOOD, "t": "2024-03-01T10:30:00"},
        {**GOOD, "x": "NA"},  # the wrong JSON type for a float
    ]
    texts = c.records(bad[:4])
    checked = c.check([c.records(GOOD)[0], *texts])
    assert 0 not in checked.problems
    rules = {i: [(p.loc[-1], p.type) for p in ps] for i, ps in checked.problems.items()}
    assert rules == {
        1: [("n", "less_than_or_equal_to(10.0)")],
        2: [("c", "isin(['red', 'green'])")],
        3: [("code", "str_matches('[A-Z]{2}[0-9]')")],
        4: [("t", "dtype(datetime, %Y-%m-%d %H:%M:%S)")],
    }
    [p] = checked.problems[2]
    assert p.loc == ("body", 2, "c") and p.input == "blue"
    assert p.msg == "column 'c' breaks isin(['red', 'green']): got 'blue'"
    assert problems_of(bad[4])[0]["type"] == "dtype(float)"


def test_null_markers_and_trimming_follow_prep() -> None:
    c = contract()
    [text] = c.records({**GOOD, "c": "  green ", "code": "n/a", "day": ""})
    checked = c.check([text])
    assert checked.problems == {}
    row = checked.typed.row(0, named=True)
    assert row["c"] == "green" and row["code"] is None and row["day"] is None
    # JSON null in a required column is refused before the batch
    [p] = problems_of({**GOOD, "x": None})
    assert (p["loc"], p["type"]) == (["body", "x"], "not_nullable")


def test_unknown_category_can_be_flagged_instead_of_refused() -> None:
    c = contract(policy="flag")
    [text] = c.records({**GOOD, "c": "blue"})
    checked = c.check([text])
    assert checked.problems == {}
    assert checked.flags == {
        0: ["unknown category: column 'c' breaks isin(['red', 'green']): got 'blue'"]
    }
    # other rules still refuse
    [text] = c.records({**GOOD, "c": "blue", "n": -1})
    assert [p.type for p in c.check([text]).problems[0]] == ["greater_than_or_equal_to(0.0)"]


def test_record_schema_documents_the_contract() -> None:
    schema = record_schema(parse_spec(read_yaml(SPEC)))
    props = schema["properties"]
    assert "y" not in props
    assert props["n"]["anyOf"][0] == {"type": "integer", "minimum": 0.0, "maximum": 10.0}
    assert props["c"]["anyOf"][0]["enum"] == ["red", "green"]
    assert props["x"] == {"type": "number"}
    assert set(schema["required"]) == {"t", "x"}
    assert schema["additionalProperties"] is False


def test_feedback_labels_are_checked_against_the_target_contract() -> None:
    spec = parse_spec(read_yaml(SPEC))
    texts, problems = check_labels(spec, ["yes", "no"])
    assert texts == ["yes", "no"] and problems == []
    _, problems = check_labels(spec, ["maybe", 3])
    assert [(p.loc, p.type) for p in problems] == [(("body", 1, "label"), "dtype(str)")]
    _, problems = check_labels(spec, ["maybe"])
    assert [p.type for p in problems] == ["isin(['no', 'yes'])"]
