"""Property tests: prep conserves rows and is idempotent, whatever the rows hold."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.core.spec import parse_spec, read_yaml
from driftloop.prep import SourceRead, prepare, read_raw

SPEC = parse_spec(
    read_yaml(
        """
name: prop
task: regression
target: x
sources: [{name: s, path: "*.csv"}]
contract:
  columns:
    k: {dtype: int, nullable: false}
    x: {dtype: float, min: 0}
    c: {dtype: str, allowed: [a, b, c]}
"""
    )
)

cell_k = st.one_of(st.integers(-5, 5).map(str), st.sampled_from(["", "1.0", "x", " 3 "]))
cell_x = st.one_of(
    st.floats(-10, 10, allow_nan=False).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["", "NaN?", "1e2", "-0.5"]),
)
cell_c = st.sampled_from(["a", "b", "c", " a", "zz", "", "b,b", 'q"uote'])
rows_strategy = st.lists(st.tuples(cell_k, cell_x, cell_c), min_size=0, max_size=60)


def write_csv(folder: Path, rows: list[tuple[str, ...]], name: str = "f.csv") -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["k", "x", "c"])
    writer.writerows(rows)
    path = folder / name
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def prep_file(path: Path) -> tuple[pl.DataFrame, dict[str, int]]:
    read = read_raw(path, SPEC.primary, path.name)
    prepared = prepare([SourceRead(SPEC.primary, "sha", read)], SPEC)
    return prepared.processed, prepared.counts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy)
def test_rows_are_conserved(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp), rows)
        if not rows:
            read = read_raw(path, SPEC.primary, path.name)
            assert read.frame is None and read.error  # header only: a quarantine entry
            return
        _, counts = prep_file(path)
    # Every written row comes back out exactly once: kept, quarantined or duplicate.
    assert counts["rows_in"] == len(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy.filter(bool))
def test_prep_is_idempotent_and_deterministic(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_csv(folder, rows)
        once, _ = prep_file(path)
        again, _ = prep_file(path)
        assert once.equals(again)
        if once.height == 0:
            return
        # Prep of prep's own output changes nothing: no row is bad or duplicate any more.
        data = once.select("k", "x", "c")
        clean_rows = [
            tuple("" if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in r)
            for r in data.rows()
        ]
        second_path = write_csv(folder, clean_rows, "g.csv")
        twice, counts = prep_file(second_path)
    assert counts["rows_quarantined"] == 0 and counts["rows_duplicate"] == 0
    assert twice.select("k", "x", "c").equals(data)


def test_impute_statistic_ignores_values_the_contract_rejects() -> None:
    from driftloop.prep.contract import imputation_values

    spec = parse_spec(
        read_yaml(
            """
name: t
task: regression
target: age
sources: [{name: s, path: "*.csv"}]
contract: {columns: {age: {dtype: int, min: 18, max: 100}}}
cleaning: {impute: {age: {strategy: mean}}}
"""
        )
    )
    frame = pl.LazyFrame({"age": ["30", "40", "50", None, "999"]})
    fills = imputation_values(frame, dict(spec.cleaning.impute), spec.contract)
    assert fills == {"age": 40}


IMPUTED = parse_spec(
    read_yaml(
        """
name: prop
task: regression
target: x
sources: [{name: s, path: "*.csv"}]
contract:
  columns:
    k: {dtype: int, nullable: false, max: 3}
    x: {dtype: float, nullable: false, min: 0}
    c: {dtype: str, allowed: [a, b, c]}
cleaning: {impute: {x: {strategy: median}}}
"""
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy.filter(bool))
def test_each_quarantined_row_names_every_rule_it_breaks(rows: list[tuple[str, str, str]]) -> None:
    """The streaming pass picks the bad rows; their reasons are worked out after it. Both
    must agree: every quarantined row breaks at least one rule, and names exactly the rules
    it breaks (with the imputed value where a rule checks one)."""
    from driftloop.prep.rules import contract_rules, with_parsed

    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp), rows)
        read = read_raw(path, IMPUTED.primary, path.name)
        prepared = prepare([SourceRead(IMPUTED.primary, "sha", read)], IMPUTED)
    columns = list(IMPUTED.contract.columns)
    rules = contract_rules(IMPUTED.contract, columns, prepared.plan.fills)
    bad = prepared.quarantined
    expected = (
        with_parsed(bad.lazy(), IMPUTED.contract, columns)
        .select(pl.concat_list([pl.when(r.failed).then(pl.lit(r.label)) for r in rules]))
        .collect()
        .to_series()
        .list.drop_nulls()
        .to_list()
    )
    assert bad.get_column("__rules").to_list() == expected
    assert all(expected), "a quarantined row that breaks no rule"
    reasons = bad.get_column("__reason").to_list()
    assert [r.count("; ") + 1 for r in reasons] == [len(e) for e in expected]
    # and no kept row breaks a rule
    kept = prepared.processed.select(pl.col(columns).cast(pl.String))
    flags = with_parsed(kept.lazy(), IMPUTED.contract, columns).select(
        pl.any_horizontal([r.failed for r in rules])
    )
    assert not flags.collect().to_series().any()
