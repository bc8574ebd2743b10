"""The contract compiled to Polars expressions agrees with pandera's own data checks."""

from __future__ import annotations

from pathlib import Path

import pandera.polars as pa
import polars as pl
import pytest

from driftloop.core.spec import parse_spec, read_yaml
from driftloop.prep.rules import POLARS_TYPES, contract_rules, pandera_schema, typed, with_parsed

from .test_datasets import BANK, TAXI


def _flagged_by_rules(raw: pl.DataFrame, spec_text: str) -> tuple[set[int], pl.DataFrame]:
    spec = parse_spec(read_yaml(spec_text))
    columns = list(spec.contract.columns)
    rules = contract_rules(spec.contract, columns, {})
    raw = with_parsed(raw.lazy(), spec.contract, columns).collect()
    flags = raw.select(pl.any_horizontal([r.failed for r in rules]).alias("bad"))
    parse_ok = raw.select(
        pl.all_horizontal(
            [r.failed.not_() for r in rules if r.name.startswith(("dtype", "max_field"))]
        ).alias("ok")
    )
    typed_frame = raw.select(typed(c, spec.contract.columns[c]) for c in columns)
    bad = set(flags.with_row_index().filter(pl.col("bad")).get_column("index").to_list())
    # pandera sees typed values; rows whose values did not parse are compared separately
    keep = parse_ok.get_column("ok")
    return bad, typed_frame.with_columns(keep.alias("__parsed"))


def _flagged_by_pandera(typed_frame: pl.DataFrame, spec_text: str) -> set[int]:
    spec = parse_spec(read_yaml(spec_text))
    schema = pandera_schema(spec.contract, list(spec.contract.columns))
    try:
        schema.validate(typed_frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return set(exc.failure_cases.get_column("index").drop_nulls().to_list())
    return set()


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("spec_text", "files", "separator", "nulls"),
    [
        (TAXI, ["nyc_taxi_yellow_sample/yellow_tripdata_sample_2020-11.csv"], ",", [""]),
        (BANK, ["bank_marketing/bank-additional-full.csv"], ";", ["", "unknown"]),
    ],
    ids=["taxi", "bank"],
)
def test_rules_flag_exactly_the_rows_pandera_flags(
    datasets: Path, spec_text: str, files: list[str], separator: str, nulls: list[str]
) -> None:
    # Tighter rules than the datasets' own, so every rule kind fires on real data.
    spec_text = (
        spec_text.replace(
            "store_and_fwd_flag: {dtype: str", "store_and_fwd_flag: {dtype: str, regex: '^[N]$'"
        )
        .replace("age: {dtype: int, min: 16, max: 110", "age: {dtype: int, min: 20, max: 80")
        .replace("education: {dtype: str}", "education: {dtype: str, regex: 'basic|high'}")
        .replace("month: {dtype: str, allowed: [mar,", "month: {dtype: str, allowed: [")
    )
    raw = pl.concat(
        pl.read_csv(datasets / f, separator=separator, infer_schema=False, null_values=nulls)
        for f in files
    )
    ours, typed_frame = _flagged_by_rules(raw, spec_text)
    parsed_rows = typed_frame.get_column("__parsed")
    theirs = _flagged_by_pandera(typed_frame.drop("__parsed"), spec_text)
    unparsed = set(typed_frame.with_row_index().filter(~parsed_rows).get_column("index").to_list())
    # Rows whose raw values did not parse are ours alone (pandera sees only typed values).
    assert ours - unparsed == theirs - unparsed
    assert unparsed <= ours
    assert len(theirs) > 100  # the data really breaks these rules


def test_output_schema_check_names_wrong_types() -> None:
    from driftloop.core.errors import StageError
    from driftloop.prep.stage import check_output_schema

    spec = parse_spec(read_yaml(TAXI))
    good = pl.LazyFrame(schema={c: POLARS_TYPES[r.dtype] for c, r in spec.contract.columns.items()})
    check_output_schema(good, spec)
    with pytest.raises(StageError, match=r"'fare_amount': 'String'"):
        check_output_schema(good.with_columns(pl.col("fare_amount").cast(pl.String)), spec)


@pytest.mark.parametrize("odd", ["", "\x1f\x1e\x1d\x1c\x00"], ids=["usual", "every-separator"])
def test_broken_labels_list_each_broken_rule_in_order(odd: str) -> None:
    from driftloop.prep.core import _broken_labels
    from driftloop.prep.rules import Rule

    rules = [
        Rule(f"a{odd}", "r1", pl.col("x") > 1),
        Rule("b", "r2", pl.col("x") > 2),
        Rule("c", "r3", pl.col("x") < 0),
    ]
    out = pl.DataFrame({"x": [3, 2, 0, -1]}).select(_broken_labels(rules)).to_series().to_list()
    a, b, c = (r.label for r in rules)
    assert out == [[a, b], [a], [], [c]]
