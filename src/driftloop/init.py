"""``driftloop init``: write a working project from a sample file or a built-in example.

Inference reads the whole sample as text, then decides per column: type (int, float, bool,
date, datetime, str), nullability (required when no value is missing), allowed values for
low-cardinality text (an open list: ``new_values: report``, except the target's) and a
plausible range for numbers (a warning rule). What one sample cannot know is written so that
later files are not lost to it, and :func:`explain` says which rules are guesses. The CSV's
layout is sniffed too: separator, encoding, lines above the header (``skip_rows``), and a
first row that looks like data (an error that says to pass ``--no-header``). The written spec
is loaded back before ``init`` returns, so it always runs as is.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from pydantic import ValidationError

from driftloop.core.errors import InitError, ProjectExistsError
from driftloop.core.layout import Layout
from driftloop.core.rawstore import RawStore, raw_store
from driftloop.core.spec import SPEC_FILENAME, CsvOptions, SourceSpec, load_spec
from driftloop.prep.contract import normalize_strings
from driftloop.prep.read import ROW, csv_rows, read_raw

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
IQR_K = 3.0  # plausible range: 1st/99th percentiles widened by this many interquartile ranges
TREND_SHARE = 0.99  # a column that never falls between rows this often is a trend, not a range


@dataclass(frozen=True)
class ColumnGuess:
    name: str
    dtype: str
    nullable: bool
    nulls: int
    rule: dict[str, Any]
    note: str


def sniff_csv(path: Path) -> CsvOptions:
    """Guess encoding, separator and the lines above the header (a title, an export note)
    from the first 64 KiB."""
    head = path.read_bytes()[: 64 * 1024]
    encoding = "utf-8"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte char cut at the sample's end is fine
            encoding = "cp1252"
        text = head.decode(encoding, errors="replace")
    text = text.removeprefix("\ufeff")
    separator = _separator(text)
    skip = leading_junk(text, separator)
    if skip:  # the separator of the table itself, without the lines above it
        separator = _separator("".join(text.splitlines(True)[skip:]))
    return CsvOptions(
        separator=separator, encoding=encoding, null_values=NULL_TOKENS, skip_rows=skip
    )


def _separator(text: str) -> str:
    first_line: str = text.splitlines()[0] if text else ""
    try:
        return csv.Sniffer().sniff(text[:16384], delimiters=",;\t|").delimiter
    except csv.Error:
        counts = {d: first_line.count(d) for d in ",;\t|"}
        return max(counts, key=lambda d: counts[d])


def leading_junk(text: str, separator: str, *, lines: int = 50) -> int:
    """How many lines at the top are not part of the table: lines before the first one with
    as many fields as most lines have (a title or an export note above the header)."""
    rows = [
        len(r)
        for r in csv.reader(io.StringIO("\n".join(text.splitlines()[:lines])), delimiter=separator)
    ]
    counts = [n for n in rows if n > 0]
    if len(counts) < 3:
        return 0
    usual = max(set(counts), key=counts.count)
    if usual < 2 or counts.count(usual) < len(counts) / 2:
        return 0
    for i, n in enumerate(rows):
        if n == usual:
            return i if i <= 5 else 0  # more than a few lines of preamble: not a preamble
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return text.strip() != ""


def headerless_reason(path: Path, opts: CsvOptions, *, rows: int = 200) -> str | None:
    """Why the first row looks like data rather than a header, or None.

    A header has names; a column whose first field is a number, and whose next rows are
    numbers too, says the first row is a record (a column named ``2019`` over numbers is the
    exception: ``init --header`` reads it as a header anyway).
    """
    with path.open(encoding=opts.encoding, errors="replace", newline="") as fh:
        reader = csv_rows(fh, opts)
        try:
            lines = [row for _, row in zip(range(rows + 1), reader, strict=False) if row]
        except csv.Error:
            return None
    if len(lines) < 2:
        return None
    first, rest = lines[0], lines[1:]
    numbers = []
    for j, value in enumerate(first):
        below = [r[j] for r in rest if j < len(r) and r[j].strip()]
        if _is_number(value) and below and sum(map(_is_number, below)) >= 0.8 * len(below):
            numbers.append(value.strip())
    if not numbers:
        return None
    shown = ", ".join(repr(v) for v in numbers[:3])
    return (
        f"{len(numbers)} of its {len(first)} fields are numbers where a header would have "
        f"names: {shown}"
    )


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


def _round_out(value: float, *, up: bool) -> float | int:
    """``value`` to 3 significant digits, rounded away from the data (a readable bound)."""
    if value == 0 or not math.isfinite(value):
        return 0
    step = 10 ** (math.floor(math.log10(abs(value))) - 2)
    out = (math.ceil if up else math.floor)(value / step) * step
    out = round(out, max(0, -math.floor(math.log10(step))))
    return int(out) if float(out).is_integer() else out


def plausible_range(values: pl.Series) -> dict[str, float | int]:
    """Robust outlier bounds from a sample: its 1st and 99th percentiles widened by ``IQR_K``
    times the interquartile range, so a few extreme values in the sample do not move them;
    a lower bound of 0 for a sample with no negative value. Empty when the sample cannot
    say: too few values, integer codes (few distinct values: next year's month 12 is no
    outlier), a counter or id (every value distinct), a column that grows with time."""
    arr = values.drop_nulls().cast(pl.Float64)
    if arr.len() < 20:
        return {}
    distinct = arr.n_unique()
    if values.dtype == pl.Int64 and (distinct <= MAX_CATEGORIES or distinct == arr.len()):
        return {}
    rising = (arr.diff().drop_nulls() >= 0).mean()
    if distinct > MAX_CATEGORIES and float(rising or 0.0) >= TREND_SHARE:  # type: ignore[arg-type]
        return {}
    q1, q3 = arr.quantile(0.25), arr.quantile(0.75)
    p_lo, p_hi = arr.quantile(0.01), arr.quantile(0.99)
    assert q1 is not None and q3 is not None and p_lo is not None and p_hi is not None
    non_negative = float(arr.min() or 0.0) >= 0  # type: ignore[arg-type]
    out: dict[str, float | int] = {}
    iqr = q3 - q1
    if iqr > 0:
        lo, hi = p_lo - IQR_K * iqr, p_hi + IQR_K * iqr
        out = {"min": _round_out(lo, up=False), "max": _round_out(hi, up=True)}
        if non_negative and lo < 0:
            out["min"] = 0
    elif non_negative:
        out = {"min": 0}
    return out


def guess_column(col: pl.Series, *, required: bool, target: bool = False) -> ColumnGuess:
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
        distinct = values.n_unique()
        flag = dtype == "int" and distinct <= 2 and set(values.unique().to_list()) <= {0, 1}
        if flag:
            note += "; 0/1 flag"
        elif dtype == "int" and distinct == 1:
            # one value cannot say whether later ones have decimals: the wider type
            dtype, values = "float", values.cast(pl.Float64)
            note += "; constant in the sample, so float (the wider type)"
        elif not required or target:  # not the id or the time column: they are what they are
            bounds = plausible_range(values)
            if bounds:
                rule["plausible"] = bounds
                outside = values.cast(pl.Float64)
                if "min" in bounds:
                    outside = outside.filter(outside >= bounds["min"])
                if "max" in bounds:
                    outside = outside.filter(outside <= bounds["max"])
                if values.len() - outside.len():
                    note += f"; {values.len() - outside.len()} sample value(s) outside plausible"
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
                if not target:  # a list seen in one sample: open (a new class is a decision)
                    rule["new_values"] = "report"
            else:
                note += f"; {distinct} distinct values"
    # Inferred from the data: a column with no missing value in the sample is required, so a
    # record without it (an empty request) is refused rather than scored on guesses.
    nullable = nulls > 0
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
        f"      has_header: {_yaml_scalar(opts.has_header)}",
        *(
            [f"      names: {_yaml_scalar(list(opts.names))}   # the columns, in order"]
            if opts.names
            else []
        ),
        *([f"      skip_rows: {opts.skip_rows}"] if opts.skip_rows else []),
        "",
        "# The column contract. A row that breaks a rule goes to data/quarantine/<batch>/ with",
        "# the rule, column and value. Rules: dtype, nullable, min, max, allowed, regex, format.",
        "# Guessed from one sample: 'allowed' lists are open (new_values: report: a new value is",
        "# kept, scored and reported with a proposed change; 'reject' closes a list), and",
        "# 'plausible' ranges report outliers without quarantining them (strict: true does).",
        "# nullable: false where the sample has no missing value. The target's labels are",
        "# closed: a new label stops the batch until you add it.",
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
        f"  datetime_parts: {_yaml_scalar(datetime_parts)}"
        + (
            "   # no year: the holdout's is always new (add it if you mean it)"
            if datetime_parts
            else ""
        ),
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


def explain(
    guesses: list[ColumnGuess],
    *,
    rows: int,
    task: str,
    target: str,
    time_column: str | None,
    id_column: str | None,
) -> list[str]:
    """What init inferred, and which rules are guesses from one sample, as lines to print."""
    by_name = {g.name: g for g in guesses}
    kinds: dict[str, int] = {}
    for g in guesses:
        kinds[g.dtype] = kinds.get(g.dtype, 0) + 1
    types = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    tg = by_name[target]
    labels = f", labels {list(tg.rule.get('allowed', []))} (closed: a new label stops the batch)"
    lines = [
        f"inferred from {rows} sample rows: {len(guesses)} columns ({types}); task {task}; "
        f"target {target!r}{labels if 'allowed' in tg.rule else ''}; time column "
        f"{time_column or 'none (row order)'}; id column {id_column or 'none'}",
    ]
    guessed = []
    open_lists = [g for g in guesses if g.rule.get("new_values") == "report"]
    if open_lists:
        shown = ", ".join(f"{g.name} ({len(g.rule['allowed'])})" for g in open_lists)
        guessed.append(
            f"allowed values of {shown}: open (new_values: report): a value not in the list "
            "is kept, scored and reported with a proposed change; set new_values: reject to "
            "quarantine it"
        )
    required = [g.name for g in guesses if not g.nullable]
    if required:
        named = ", ".join(required[:25]) + (
            f", ... ({len(required)} in all)" if len(required) > 25 else ""
        )
        guessed.append(
            f"not nullable, as no value is missing in the sample: {named}; a "
            "missing value is quarantined and /predict requires the field; set nullable: true "
            "where a value may be missing"
        )
    ranged = [g for g in guesses if "plausible" in g.rule]
    if ranged:
        shown = ", ".join(f"{g.name} {_range_text(g.rule['plausible'])}" for g in ranged)
        guessed.append(
            f"plausible ranges (1st/99th percentile +/- {IQR_K:g} IQR; reported, not quarantined; "
            f"strict: true quarantines): {shown}"
        )
    if guessed:
        lines.append("guesses from one sample (check them in driftloop.yaml):")
        lines += [f"  - {g}" for g in guessed]
    return lines


def _range_text(bounds: dict[str, Any]) -> str:
    if "max" not in bounds:
        return f">= {bounds['min']}"
    if "min" not in bounds:
        return f"<= {bounds['max']}"
    return f"[{bounds['min']}, {bounds['max']}]"


def init_from_file(
    project: Path,
    sample: Path | str,
    target: str,
    *,
    time_column: str | None = None,
    name: str | None = None,
    task: str | None = None,
    force: bool = False,
    notes: list[str] | None = None,
    header: bool | None = None,
    names: list[str] | None = None,
) -> Path:
    """Infer a spec from a sample (a path or URL), write it, and copy the sample into
    data/raw/<source>/. ``notes``, when given, receives what was inferred and which rules
    are guesses from one sample (``driftloop init`` prints them). ``header``: whether the
    CSV's first row is a header (None: it is, unless it looks like data, which is an error
    that says so); ``names`` names the columns of a file without one."""
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
    if local is not None:
        return _init_from_local(
            project, store, key, local, target, time_column, name, task, notes, header, names
        )
    # An object store's sample (s3://bucket/prefix/file.csv): read from a local copy, and the
    # source is the sample's folder in the bucket, where the first run takes the sample itself
    with tempfile.TemporaryDirectory(prefix="driftloop-init-") as scratch:
        copy = Path(scratch) / key.rpartition("/")[2]
        with store.open(key) as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        folder = key.rpartition("/")[0]
        return _init_from_local(
            project,
            store,
            key,
            copy,
            target,
            time_column,
            name,
            task,
            notes,
            header,
            names,
            folder=folder,
        )


def _init_from_local(
    project: Path,
    store: RawStore,
    key: str,
    sample: Path,
    target: str,
    time_column: str | None,
    name: str | None,
    task: str | None,
    notes: list[str] | None,
    header: bool | None,
    names: list[str] | None,
    *,
    folder: str | None = None,
) -> Path:
    """:func:`init_from_file` once the sample is a file of this machine; ``folder``: the
    object store's folder the sample came from (the source reads it; nothing is copied)."""
    layout = Layout(project)
    is_parquet = sample.suffix.lower() in (".parquet", ".pq")
    opts = CsvOptions() if is_parquet else sniff_csv(sample)
    if names and header is not False:
        raise InitError("--names names the columns of a file without a header; add --no-header")
    if header is False and not is_parquet:
        try:
            opts = CsvOptions(**{**opts.model_dump(), "has_header": False, "names": names or None})
        except ValidationError as exc:
            why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise InitError(f"--names: {why}") from None
    elif header is None and not is_parquet:
        looks_like_data = headerless_reason(sample, opts)
        if looks_like_data:
            raise InitError(
                f"{sample}: the first row looks like data, not a header ({looks_like_data}). "
                "If the file has no header row, pass --no-header, with --names a,b,c to name "
                "the columns (else they are column_1, column_2, ...); the spec keeps both for "
                "later files. If that row is the header, pass --header"
            )
    source_name = _source_name(sample)
    suffix = "parquet" if is_parquet else sample.suffix.lstrip(".").lower() or "csv"
    source = SourceSpec(
        name=source_name,
        # CSV is a format, not an extension: a census file's '.data' sample has a '.test'
        # sibling, an export may land as '.txt'; every file in the folder is read as CSV
        # (one that is not is quarantined with the reason, never skipped unseen)
        path=(
            layout.source_pattern(source_name, "parquet" if is_parquet else None)
            if folder is None
            else f"{folder}/{'*.parquet' if is_parquet else '*'}"
        ),
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
        guess_column(
            frame.get_column(c),
            required=c in (target, time_column, id_column),
            target=c == target,
        )
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
    # No ``year``: under a time split the holdout's year (and every later one) is outside
    # the training range, so a model cannot generalise it and monitoring sees it drift in
    # every report. A user who wants it writes it in.
    parts: dict[str, list[str]] = {}
    if time_column and by_name[time_column].dtype == "datetime":
        parts[time_column] = ["month", "weekday", "hour"]
    elif time_column and by_name[time_column].dtype == "date":
        parts[time_column] = ["month", "weekday"]
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
    if notes is not None and opts.skip_rows:
        top = sample.read_text(encoding=opts.encoding, errors="replace").splitlines()
        notes.append(
            f"skipped {opts.skip_rows} line(s) above the header ({top[0][:60]!r}); the spec "
            f"says csv.skip_rows: {opts.skip_rows}, for every later file of this source"
        )
    if notes is not None:
        notes += explain(
            guesses,
            rows=frame.height,
            task=chosen_task,
            target=target,
            time_column=time_column,
            id_column=id_column,
        )
    if folder is not None:  # the sample stays where it is: the first run takes it there
        layout.spec.write_text(text, encoding="utf-8")
        load_spec(project)  # what init writes must load as is
        if notes is not None:
            notes.append(f"source {source_name!r} reads {source.path}; the sample is taken there")
        return layout.spec
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
