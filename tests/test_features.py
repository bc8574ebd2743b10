"""The feature function: built-ins, the user's function, and batch/record parity."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from driftloop.core.errors import FeatureError
from driftloop.core.spec import parse_spec, read_yaml
from driftloop.features.compute import (
    build_features,
    features_for_records,
    load_user_function,
)
from driftloop.pipeline import run

from .helpers import BIKE_SOURCE, features_of, link_raw, write_spec

BIKE = (
    BIKE_SOURCE
    + """contract:
  columns:
    instant: {dtype: int}
    dteday: {dtype: date, format: "%Y-%m-%d"}
    season: {dtype: int, allowed: [1, 2, 3, 4]}
    yr: {dtype: int}
    mnth: {dtype: int, min: 1, max: 12}
    hr: {dtype: int, min: 0, max: 23}
    holiday: {dtype: int}
    weekday: {dtype: int}
    workingday: {dtype: int}
    weathersit: {dtype: int, min: 1, max: 4}
    temp: {dtype: float}
    atemp: {dtype: float}
    hum: {dtype: float}
    windspeed: {dtype: float}
    casual: {dtype: int}
    registered: {dtype: int}
    cnt: {dtype: int, min: 0}
features:
  datetime_parts: {dteday: [year, month, weekday, dayofyear]}
  ratios: [{name: temp_per_hum, numerator: temp, denominator: hum}]
  logs: [windspeed]
  buckets: [{column: hr, edges: [6, 10, 16, 20]}]
  exclude: [instant, casual, registered]
  function: bike_features:extra
ingest: {settle_seconds: 0, follow_links_outside: true}  # datasets linked in place
model: {enabled: false}  # prep and features only here
"""
)

USER_MODULE = """
import polars as pl

def extra(frame: pl.LazyFrame) -> list[pl.Expr]:
    return [
        (pl.col("hr") * 60).alias("minutes_of_day"),
        (pl.col("atemp") - pl.col("temp")).alias("feels_delta"),
    ]
"""


@pytest.mark.shared_data
def test_batch_and_single_record_features_are_identical(datasets: Path, tmp_path: Path) -> None:
    write_spec(tmp_path, BIKE)
    (tmp_path / "bike_features.py").write_text(USER_MODULE)
    link_raw(tmp_path, "hours", datasets / "bike_sharing" / "hour.csv")
    result = run(tmp_path)
    assert not result.failed, [r.error for r in result.failed]
    processed = pl.read_parquet(next((tmp_path / "data/processed").glob("*/data.parquet")))
    batch = features_of(tmp_path)
    assert {"dteday_year", "temp_per_hum", "log1p_windspeed", "hr_bucket", "minutes_of_day"} <= set(
        batch.columns
    )
    assert not {"casual", "registered", "instant"} & set(batch.columns)

    spec = parse_spec(read_yaml(BIKE))
    func = load_user_function("bike_features:extra", tmp_path)
    raw_cols = [c for c in processed.columns if not c.startswith("__")]
    schema = {c: processed.schema[c] for c in raw_cols}
    picks = list(range(0, processed.height, 97))  # every 97th row, about 180 records
    for i in picks:
        record = processed.row(i, named=True)
        one = features_for_records([{c: record[c] for c in raw_cols}], spec, schema, func)
        expected = batch.slice(i, 1).select(one.columns)
        assert one.equals(expected), (i, one.to_dicts(), expected.to_dicts())


def test_builtins_are_row_wise_and_safe() -> None:
    spec = parse_spec(
        read_yaml(
            """
name: t
task: regression
target: y
sources: [{name: s, path: x}]
contract: {columns: {y: {dtype: float}, a: {dtype: float}, b: {dtype: float}}}
features:
  ratios: [{name: r, numerator: a, denominator: b}]
  logs: [a]
  buckets: [{column: a, edges: [0, 10]}]
"""
        )
    )
    frame = pl.LazyFrame({"y": [1.0, 2.0, 3.0], "a": [-5.0, 5.0, None], "b": [0.0, 2.0, 1.0]})
    out = build_features(frame, spec).collect()
    assert out.get_column("r").to_list() == [None, 2.5, None]  # no division by zero
    assert out.get_column("log1p_a").to_list()[1] == pytest.approx(math.log1p(5.0))
    assert out.get_column("log1p_a").to_list()[0] is None  # log of a value below -1 is missing
    assert out.get_column("a_bucket").to_list() == ["(-inf, 0]", "(0, 10]", None]


def test_user_function_errors_name_the_function(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="cannot import module 'nope'"):
        load_user_function("nope:f", tmp_path)
    (tmp_path / "feats_bad.py").write_text("x = 1\n")
    with pytest.raises(FeatureError, match="has no function 'f'"):
        load_user_function("feats_bad:f", tmp_path)


def test_an_edited_feature_module_is_what_runs(tmp_path: Path) -> None:
    module = tmp_path / "feats.py"
    module.write_text("import polars as pl\ndef f(frame):\n    return [pl.lit(1).alias('v')]\n")
    frame = pl.LazyFrame({"a": [1, 2]})
    first = load_user_function("feats:f", tmp_path)
    module.write_text("import polars as pl\ndef f(frame):\n    return [pl.lit(2).alias('v')]\n")
    second = load_user_function("feats:f", tmp_path)
    assert frame.with_columns(first(frame)).collect().get_column("v").to_list() == [1, 1]
    assert frame.with_columns(second(frame)).collect().get_column("v").to_list() == [2, 2]
    module.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(FeatureError, match=r"importing .*feats.py raised RuntimeError: boom"):
        load_user_function("feats:f", tmp_path)


DELTA_SPEC = """
name: d
task: regression
target: y
sources: [{name: s, path: data/raw/s/*.csv}]
contract: {columns: {x: {dtype: float}, y: {dtype: float}, k: {dtype: str}}}
features:
  logs: [x]
  exclude: [k]
  function: feats:f
ingest: {settle_seconds: 0}
model: {enabled: false}  # prep and features only here
"""


@pytest.mark.parametrize(
    ("body", "storage"),
    [
        ("return [(pl.col('x') * 2).alias('x2'), (pl.col('y') + 1).alias('y')]", "delta"),
        ("return frame.with_columns((pl.col('x') * 2).alias('x2'), pl.col('y') + 1)", "full"),
    ],
)
def test_features_stored_as_delta_or_full_read_the_same(
    tmp_path: Path, body: str, storage: str
) -> None:
    from driftloop.core.layout import Layout, read_manifest
    from driftloop.features.stage import read_features

    write_spec(tmp_path, DELTA_SPEC)
    (tmp_path / "feats.py").write_text(f"import polars as pl\ndef f(frame):\n    {body}\n")
    (tmp_path / "data/raw/s").mkdir(parents=True)
    (tmp_path / "data/raw/s/a.csv").write_text("x,y,k\n1,10,a\n3,30,b\n")
    assert not run(tmp_path).failed
    [batch] = [p.name for p in (tmp_path / "data/features").iterdir()]
    manifest = read_manifest(tmp_path / "data/features" / batch)
    assert manifest["storage"] == storage
    got = read_features(Layout(tmp_path), batch).collect()
    assert got.columns == ["x", "y", "__row", "__file", "log1p_x", "x2"]
    assert got.get_column("y").to_list() == [11.0, 31.0]  # replaced by the function
    assert got.get_column("x2").to_list() == [2.0, 6.0]
    if storage == "delta":  # only the computed columns are written
        stored = pl.read_parquet(tmp_path / "data/features" / batch / "data.parquet")
        assert stored.columns == ["log1p_x", "x2", "y"]


def test_reading_delta_features_over_a_newer_base_is_refused(tmp_path: Path) -> None:
    import shutil

    from driftloop.core.errors import StageError
    from driftloop.core.layout import Layout
    from driftloop.features.stage import read_features

    write_spec(tmp_path, DELTA_SPEC.replace("  function: feats:f\n", ""))
    (tmp_path / "data/raw/s").mkdir(parents=True)
    (tmp_path / "data/raw/s/a.csv").write_text("x,y,k\n1,10,a\n")
    run(tmp_path)
    [batch] = [p.name for p in (tmp_path / "data/features").iterdir()]
    # As if prep had re-run (new key) and features had not caught up yet:
    manifest = tmp_path / "data/processed" / batch / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"run_key": "', '"run_key": "x'))
    with pytest.raises(StageError, match="built from another version"):
        read_features(Layout(tmp_path), batch)
    shutil.rmtree(tmp_path / "data/processed" / batch)
    with pytest.raises(StageError, match="built from another version"):
        read_features(Layout(tmp_path), batch)


def test_features_that_compute_nothing_still_count_and_read_every_row(tmp_path: Path) -> None:
    from driftloop.core.layout import Layout, read_manifest
    from driftloop.features.stage import read_features

    write_spec(
        tmp_path, DELTA_SPEC.replace("  logs: [x]\n", "").replace("  function: feats:f\n", "")
    )
    (tmp_path / "data/raw/s").mkdir(parents=True)
    (tmp_path / "data/raw/s/a.csv").write_text("x,y,k\n1,10,a\n3,30,b\n5,50,c\n")
    assert not run(tmp_path).failed
    [batch] = [p.name for p in (tmp_path / "data/features").iterdir()]
    assert read_manifest(tmp_path / "data/features" / batch)["rows"] == 3
    got = read_features(Layout(tmp_path), batch).collect()
    assert got.height == 3 and got.columns == ["x", "y", "__row", "__file"]
