"""``driftloop init``: write a working project from a sample file or a built-in example.

Inference reads the whole sample as text, then decides per column: type (int, float, bool,
date, datetime, str), nullability, a lower bound where every value is non-negative, and
allowed values for low-cardinality text. Bounds seen in the sample are written as comments,
not rules, so next month's larger values are not quarantined. The written spec is loaded
back before ``init`` returns, so it always runs as is.
"""

from __future__ import annotations

import csv
import difflib
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from driftloop.core.errors import InitError, ProjectExistsError
from driftloop.core.layout import Layout
from driftloop.core.rawstore import raw_store
from driftloop.core.spec import SPEC_FILENAME, CsvOptions, SourceSpec, load_spec
from driftloop.prep.contract import normalize_strings
from driftloop.prep.read import ROW, read_raw

NULL_TOKENS = ("", "NA", "N/A", "NULL", "null", "NaN", "nan")
DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
)
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y")
MAX_CATEGORIES = 30
NUMERIC_SHARE = 0.99  # a column this numeric is numeric; the rest is quarantined as bad values


@dataclass(frozen=True)
class ColumnGuess:
    name: str
    dtype: str
    nullable: bool
    nulls: int
    rule: dict[str, Any]
    note: str


def sniff_csv(path: Path) -> CsvOptions:
    """Guess encoding and separator from the first 64 KiB."""
    head = path.read_bytes()[: 64 * 1024]
    encoding = "utf-8"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte char cut at the sample's end is fine
            encoding = "cp1252"
        text = head.decode(encoding, errors="replace")
    text = text.removeprefix("\ufeff")
    first_line: str = text.splitlines()[0] if text else ""
    try:
        dialect = csv.Sniffer().sniff(text[:16384], delimiters=",;\t|")
        separator = dialect.delimiter
    except csv.Error:
        counts = {d: first_line.count(d) for d in ",;\t|"}
        separator = max(counts, key=lambda d: counts[d])
    return CsvOptions(separator=separator, encoding=encoding, null_values=NULL_TOKENS)


def _as_numeric(col: pl.Series) -> tuple[str, pl.Series] | None:
    values = col.drop_nulls()
    if values.len() == 0:
        return None
    as_int = values.cast(pl.Int64, strict=False)
    if as_int.null_count() <= values.len() * (1 - NUMERIC_SHARE):
        return "int", as_int
    as_float = values.cast(pl.Float64, strict=False)
    if as_float.null_count() <= values.len() * (1 - NUMERIC_SHARE):
        return "float", as_float
    return None


def _as_temporal(col: pl.Series) -> tuple[str, str] | None:
    values = col.drop_nulls().head(5000)
    if values.len() == 0 or not values.str.contains(r"^\d").all():
        return None
    for fmt in DATETIME_FORMATS:
        if values.str.to_datetime(fmt, strict=False).null_count() == 0:
            return "datetime", fmt
    for fmt in DATE_FORMATS:
        if values.str.to_date(fmt, strict=False).null_count() == 0:
            return "date", fmt
    return None


def guess_column(col: pl.Series, *, required: bool) -> ColumnGuess:
    nulls = col.null_count()
    rule: dict[str, Any] = {}
    note = f"{nulls} missing of {col.len()}"
    numeric = _as_numeric(col)
    temporal = None if numeric else _as_temporal(col)
    if numeric:
        dtype, values = numeric
        arr = values.cast(pl.Float64).to_numpy()
        lo, hi = float(arr.min()), float(arr.max())
        note += f"; seen {lo:g} .. {hi:g}"
        if lo >= 0:
            rule["min"] = 0
        distinct = values.n_unique()
        if dtype == "int" and distinct <= 2 and set(values.unique().to_list()) <= {0, 1}:
            note += "; 0/1 flag"
    elif temporal:
        dtype, fmt = temporal
        rule["format"] = fmt
    else:
        values = col.drop_nulls()
        lowered = set(values.str.to_lowercase().unique().to_list())
        if lowered and lowered <= {"true", "false"}:
            dtype = "bool"
        else:
            dtype = "str"
            distinct = values.n_unique()
            if 0 < distinct <= MAX_CATEGORIES and values.len() >= 20 * distinct:
                rule["allowed"] = sorted(values.unique().to_list())
            else:
                note += f"; {distinct} distinct values"
    nullable = nulls > 0 or not required
    return ColumnGuess(col.name, dtype, nullable, nulls, rule, note)


def _source_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", path.stem).strip("_").lower() or "data"
    return name if re.match(r"^[A-Za-z_]", name) else f"src_{name}"


def _yaml_scalar(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
        .strip()
        .removesuffix("\n...")
    )


def _task_for(guess: ColumnGuess, column: pl.Series) -> str:
    if guess.dtype in ("str", "bool"):
        return "classification"
    if guess.dtype == "int" and column.drop_nulls().n_unique() <= 20:
        return "classification"
    return "regression"


def render_spec(
    *,
    name: str,
    task: str,
    target: str,
    time_column: str | None,
    id_column: str | None,
    source: SourceSpec,
    guesses: list[ColumnGuess],
    exclude: list[str],
    datetime_parts: dict[str, list[str]],
    sample: str,
) -> str:
    """A commented driftloop.yaml."""
    opts = source.csv
    lines = [
        f"# driftloop project spec, written by 'driftloop init' from {sample}.",
        "# Every key is checked: a misspelt key is an error that names it.",
        "",
        f"name: {_yaml_scalar(name)}",
        f"task: {task}            # classification | regression",
        f"target: {_yaml_scalar(target)}",
        f"time_column: {_yaml_scalar(time_column)}   # orders the data; null: batch order",
        f"id_column: {_yaml_scalar(id_column)}",
        "",
        "# Where raw files land. Files are only read; each is taken once, by content hash.",
        "sources:",
        f"  - name: {source.name}",
        f"    path: {_yaml_scalar(source.path)}",
        f"    format: {source.format}",
        "    csv:",
        f"      separator: {_yaml_scalar(opts.separator)}",
        f"      quote_char: {_yaml_scalar(opts.quote_char)}",
        f"      encoding: {opts.encoding}",
        f"      null_values: {_yaml_scalar(list(opts.null_values))}   # missing, after trimming",
        "      has_header: true",
        "",
        "# The column contract. A row that breaks a rule goes to data/quarantine/<batch>/ with",
        "# the rule, column and value. Rules: dtype, nullable, min, max, allowed, regex, format.",
        "contract:",
        "  extra_columns: reject   # reject: quarantine files with unknown columns; drop: ignore",
        "  columns:",
    ]
    for g in guesses:
        rule = {"dtype": g.dtype, "nullable": g.nullable, **g.rule}
        lines.append(f"    {_yaml_scalar(g.name)}: {_yaml_scalar(rule)}   # {g.note}")
    lines += [
        "",
        "cleaning:",
        "  trim_strings: true",
        "  deduplicate: {enabled: true}   # exact duplicate rows are set aside and counted",
        "  impute: {}                     # e.g. {age: {strategy: median}}",
        "",
        "features:",
        f"  datetime_parts: {_yaml_scalar(datetime_parts)}",
        "  ratios: []      # e.g. [{name: price_per_item, numerator: price, denominator: items}]",
        "  logs: []        # log1p of non-negative columns",
        "  buckets: []     # e.g. [{column: age, edges: [18, 30, 50, 65]}]",
        f"  exclude: {_yaml_scalar(exclude)}   # kept out of model inputs (ids, leakage)",
        "  function: null  # optional 'module:function' in this folder taking a polars LazyFrame",
        "",
        "quarantine:",
        "  max_bad_share: 0.5   # a batch with more bad rows than this fails",
        "",
    ]
    return "\n".join(lines)


def init_from_file(
    project: Path,
    sample: Path | str,
    target: str,
    *,
    time_column: str | None = None,
    name: str | None = None,
    task: str | None = None,
    force: bool = False,
) -> Path:
    """Infer a spec from a sample (a path or URL), write it, and copy the sample into
    data/raw/<source>/."""
    layout = Layout(project)
    if layout.spec.exists() and not force:
        raise ProjectExistsError(
            f"{layout.spec} already exists; run init in an empty folder, or pass --force"
        )
    # the sample's store, chosen by its URL; a relative path is relative to the working folder
    url = str(sample)
    store = raw_store(url, Path(), what="--from")
    try:
        key = store.stat(url).key
    except OSError:
        raise InitError(f"{url}: no such file; pass the path of a CSV or Parquet sample") from None
    local = store.local_path(key)
    if local is None:
        raise InitError(f"{url}: {store.scheme}:// samples cannot be read yet")
    sample = local
    is_parquet = sample.suffix.lower() in (".parquet", ".pq")
    opts = CsvOptions() if is_parquet else sniff_csv(sample)
    source_name = _source_name(sample)
    suffix = "parquet" if is_parquet else sample.suffix.lstrip(".").lower() or "csv"
    source = SourceSpec(
        name=source_name,
        path=layout.source_pattern(source_name, suffix),
        format="parquet" if is_parquet else "csv",
        csv=opts,
    )
    read = read_raw(sample, source, str(sample), stream_min_bytes=None)
    if read.frame is None:
        raise InitError(f"{sample}: cannot infer a spec: {read.error}")
    # The same trimming and null markers prep applies, so inference sees what prep will see.
    frame = normalize_strings(read.frame.drop(ROW), opts, trim=True).collect()
    columns = frame.columns
    for wanted, flag in ((target, "--target"), (time_column, "--time-column")):
        if wanted is not None and wanted not in columns:
            close = difflib.get_close_matches(wanted, columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; columns are {columns}"
            raise InitError(f"{sample}: {flag} {wanted!r} is not a column{hint}")
    id_column = _guess_id(frame, target)
    guesses = [
        guess_column(frame.get_column(c), required=c in (target, time_column, id_column))
        for c in columns
    ]
    by_name = {g.name: g for g in guesses}
    if time_column is None:
        temporal = [g.name for g in guesses if g.dtype in ("date", "datetime") and g.nulls == 0]
        time_column = temporal[0] if len(temporal) == 1 else None
        if time_column is not None:  # the time column orders the data: required
            guesses = [replace(g, nullable=False) if g.name == time_column else g for g in guesses]
            by_name = {g.name: g for g in guesses}
    if time_column is not None and by_name[time_column].dtype not in (
        "date",
        "datetime",
        "int",
        "float",
    ):
        raise InitError(
            f"{sample}: --time-column {time_column!r} holds {by_name[time_column].dtype} values, "
            "not dates or numbers; choose a date/datetime column, or omit it to use row order"
        )
    chosen_task = task or _task_for(by_name[target], frame.get_column(target))
    parts: dict[str, list[str]] = {}
    if time_column and by_name[time_column].dtype == "datetime":
        parts[time_column] = ["year", "month", "weekday", "hour"]
    elif time_column and by_name[time_column].dtype == "date":
        parts[time_column] = ["year", "month", "weekday"]
    exclude = [id_column] if id_column else []
    text = render_spec(
        name=name or _source_name(project.resolve()) or source_name,
        task=chosen_task,
        target=target,
        time_column=time_column,
        id_column=id_column,
        source=source,
        guesses=guesses,
        exclude=exclude,
        datetime_parts=parts,
        sample=sample.name,
    )
    raw_dir = layout.raw / source_name
    raw_dir.mkdir(parents=True, exist_ok=True)
    layout.spec.write_text(text, encoding="utf-8")
    load_spec(project)  # what init writes must load as is
    destination = raw_dir / (sample.stem + "." + suffix)
    if sample.resolve() != destination.resolve():
        with store.open(key) as src, destination.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return layout.spec


def _guess_id(frame: pl.DataFrame, target: str) -> str | None:
    for column in frame.columns:
        if column == target:
            continue
        if re.search(r"(^|_|[a-z])(id|ID|Id)$", column) or column.lower() in ("id", "key", "uuid"):
            col = frame.get_column(column)
            if col.null_count() == 0 and col.n_unique() == frame.height and frame.height > 1:
                return column
    return None


def init_example(project: Path, name: str, *, force: bool = False, seed: int = 0) -> Path:
    """Write a demo project whose generator produces realistic raw data."""
    from driftloop.examples import write_example

    layout = Layout(project)
    if layout.spec.exists() and not force:
        raise ProjectExistsError(
            f"{layout.spec} already exists; run init in an empty folder, or pass --force"
        )
    write_example(project, name, seed=seed)
    load_spec(project)
    return project / SPEC_FILENAME
