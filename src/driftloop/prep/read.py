"""Read one raw file into a lazy frame of raw strings, keeping every problem it has.

Every column is read as text so that a value of the wrong type is caught per row by the
contract, not as a failed file. A file that cannot be read at all comes back with the reason
and no frame. Two readers, one result:

- exact (files below ``STREAM_MIN_BYTES``, other encodings, or any doubt): pyarrow's CSV
  reader, which sets aside every row with the wrong number of fields with its line number
  and text; Polars takes the table without a copy.
- streaming (large UTF-8 files whose last record is whole): Polars' streaming CSV scan, so
  prep runs in bounded memory. Polars fails on a row with too many fields (the stage then
  re-reads with the exact reader) and cannot tell a row with too few fields from one with
  empty trailing fields; the check that the last record is whole catches the common case of
  a truncated upload.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from driftloop.core.errors import first_line
from driftloop.core.spec import CsvOptions, SourceSpec

ROW = "__row"
FILE = "__file"
_SNIFF_BYTES = 64 * 1024
STREAM_MIN_BYTES = 64 << 20
_BLOCK_BYTES = 1 << 20  # pyarrow's default; a row must fit in one block
_MAX_BLOCK_BYTES = 1 << 28
_OTHER_SEPARATORS = (",", ";", "\t", "|")
_MAGIC = (  # formats that land under a .csv name now and then
    (b"\x1f\x8b", "gzip-compressed; decompress it before it lands"),
    (b"PK\x03\x04", "a zip archive (or an Excel .xlsx); export it as CSV"),
    (b"PAR1", "a Parquet file; give it a source with format: parquet"),
)


@dataclass(frozen=True)
class BadLine:
    line: int | None
    reason: str
    text: str


@dataclass
class RawRead:
    """The outcome of reading one file: a frame of strings, or the reason there is none."""

    path: str
    frame: pl.LazyFrame | None
    bad_lines: list[BadLine] = field(default_factory=list)
    error: str | None = None
    header_lines: int = 0  # lines before the first record: BadLine.line - this = record number
    streamed: bool = False


def read_raw(
    path: Path,
    source: SourceSpec,
    shown_as: str,
    *,
    stream_min_bytes: int | None = STREAM_MIN_BYTES,
) -> RawRead:
    """Read ``path`` as the source says; never raises for bad content.

    ``stream_min_bytes=None`` forces the exact reader.
    """
    try:
        if source.format == "parquet":
            return _read_parquet(path, shown_as)
        return _read_csv(path, source.csv, shown_as, stream_min_bytes)
    except OSError as exc:
        return RawRead(shown_as, None, error=f"cannot open the file: {exc.strerror or exc}")


def _read_parquet(path: Path, shown_as: str) -> RawRead:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for corrupt files
        return RawRead(shown_as, None, error=f"not a readable Parquet file: {first_line(exc)}")
    problem = _parquet_column_problem(frame)
    if problem is not None:  # the file alone is quarantined; the batch's others go on
        return RawRead(shown_as, None, error=problem)
    try:
        strings = frame.select(pl.all().cast(pl.String))
    except pl.exceptions.PolarsError as exc:  # a type with no text form
        return RawRead(
            shown_as,
            None,
            error=f"a column cannot be read as text ({first_line(exc)}); expected columns of "
            "strings, numbers, booleans or dates. Convert it before the file lands",
        )
    rows = pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW)
    return RawRead(shown_as, strings.lazy().select(rows, pl.all()))


def _parquet_column_problem(frame: pl.DataFrame) -> str | None:
    """Why a Parquet file's columns cannot be read as the text prep checks, or None: a
    nested column (list, array, struct) has no one value per field, and a binary column is
    text only when every value is valid UTF-8. The reason names the column (and the first
    bad record) and says how to fix it."""
    for name, dtype in frame.schema.items():
        if dtype.is_nested():
            return (
                f"column {name!r} is nested ({dtype}); expected one scalar value per "
                "field (string, number, boolean, date). Flatten or drop the column before the "
                "file lands (one column per element, or the list joined into a string)"
            )
        if dtype == pl.Binary and (bad := _not_utf8(frame.get_column(name))):
            return (
                f"column {name!r} is binary: record {bad[0]} is not valid UTF-8 "
                f"({len(bad)} record(s) in all); expected UTF-8 text. Write the column as "
                "a UTF-8 string column, or drop it before the file lands"
            )
    return None


def _not_utf8(values: pl.Series) -> list[int]:
    """The record numbers (from 1) of a binary column's values that are not UTF-8."""
    try:
        values.cast(pl.String)  # the common case: all text, one vectorised check
    except pl.exceptions.PolarsError:  # (Polars raises even when not strict)
        pass
    else:
        return []
    bad = []
    for i, value in enumerate(values.to_list(), start=1):
        try:
            if value is not None:
                value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return bad


def _read_csv(path: Path, opts: CsvOptions, shown_as: str, stream_min_bytes: int | None) -> RawRead:
    size = path.stat().st_size
    if size == 0:
        return RawRead(shown_as, None, error="the file is empty (0 bytes); expected a header row")
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    utf16 = codecs.lookup(opts.encoding).name.startswith("utf-16")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not utf16:
        return RawRead(
            shown_as,
            None,
            error=f"the file starts with a UTF-16 byte-order mark, so it is UTF-16 text, not "
            f"{opts.encoding}; set the source's csv.encoding: utf-16, or save the file as "
            f"{opts.encoding}",
        )
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return RawRead(shown_as, None, error=f"the file is not CSV text: it is {what}")
    if b"\x00" in head and not utf16:
        return RawRead(
            shown_as,
            None,
            error="the file looks binary (NUL bytes in its first 64 KiB), not CSV text; "
            "check that the right file was uploaded",
        )
    try:
        names = _header(head, opts)
    except UnicodeDecodeError as exc:
        return RawRead(shown_as, None, error=_encoding_error(opts, exc.start))
    except ValueError as exc:
        return RawRead(shown_as, None, error=str(exc))
    wrong_separator = _separator_hint(names, opts)
    if wrong_separator:
        return RawRead(shown_as, None, error=wrong_separator)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        return RawRead(
            shown_as,
            None,
            error=f"the header repeats column name(s) {dupes}; each column needs its own name",
        )
    header_lines = opts.skip_rows + (1 if opts.has_header else 0)
    if stream_min_bytes is not None and size >= stream_min_bytes and _streamable(path, opts, names):
        scan = _scan_csv(path, opts, names)
        return RawRead(shown_as, scan, header_lines=header_lines, streamed=True)
    bad: list[BadLine] = []
    table = _arrow_csv(path, opts, names, bad, use_threads=True)
    if isinstance(table, str):
        return RawRead(shown_as, None, error=table)
    if bad:  # the threaded reader does not know line numbers; read again to get them
        bad.clear()
        table = _arrow_csv(path, opts, names, bad, use_threads=False)
        if isinstance(table, str):
            return RawRead(shown_as, None, error=table)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(_record_numbers(frame.height, bad, opts))
    unclosed = _quote_open_at_end(path, frame, names, opts)
    if unclosed is not None:
        bad.append(unclosed)
        frame = frame.head(frame.height - 1)
    if frame.height == 0 and not bad:
        return RawRead(
            shown_as,
            None,
            error="the file has a header but no data rows; expected at least one row "
            "under the header",
        )
    return RawRead(
        shown_as, frame.select(ROW, *names).lazy(), bad_lines=bad, header_lines=header_lines
    )


def _streamable(path: Path, opts: CsvOptions, names: list[str]) -> bool:
    """UTF-8, and the last record has every field (a cut-off upload goes the exact way)."""
    if codecs.lookup(opts.encoding).name != "utf-8":
        return False
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - _SNIFF_BYTES))
        tail = fh.read().decode("utf-8", errors="replace")
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return False
    quote = opts.quote_char
    if quote is not None and lines[-1].count(quote) % 2 == 1:
        return False  # the last record spans lines or leaves a quote open
    fields = next(
        csv.reader(
            [lines[-1]],
            delimiter=opts.separator,
            quotechar=quote or '"',
            quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
        )
    )
    return len(fields) == len(names)


def _scan_csv(path: Path, opts: CsvOptions, names: list[str]) -> pl.LazyFrame:
    scan = pl.scan_csv(
        path,
        has_header=opts.has_header,
        separator=opts.separator,
        quote_char=opts.quote_char,
        skip_rows=opts.skip_rows,
        schema=dict.fromkeys(names, pl.String),
        empty_string_is_null=False,
        row_index_name=ROW,
        row_index_offset=1,
    )
    return scan.select(pl.col(ROW).cast(pl.Int64), *names)


def csv_rows(lines: TextIO, opts: CsvOptions) -> Iterator[list[str]]:
    """The rows of a CSV text below its ``skip_rows``, split as the source's options say
    (Python's reader, for the few rows a header check or ``init``'s sample looks at)."""
    for _ in range(opts.skip_rows):
        lines.readline()
    return csv.reader(
        lines,
        delimiter=opts.separator,
        quotechar=opts.quote_char or '"',
        quoting=csv.QUOTE_MINIMAL if opts.quote_char else csv.QUOTE_NONE,
    )


def _header(head: bytes, opts: CsvOptions) -> list[str]:
    decoder = codecs.getincrementaldecoder(opts.encoding)()
    text = decoder.decode(head, final=False)
    text = text.removeprefix("\ufeff")
    reader = csv_rows(io.StringIO(text, newline=""), opts)
    try:
        first = next(reader)
    except StopIteration:
        raise ValueError("the file has no header row") from None
    except csv.Error as exc:
        raise ValueError(f"the header row cannot be parsed: {exc}") from None
    if not first:
        raise ValueError(
            "the first line is blank where the header row should be; remove the blank "
            "line(s) at the top, or set the source's csv.skip_rows to skip them"
        )
    if not opts.has_header:
        if opts.names is None:
            return [f"column_{i + 1}" for i in range(len(first))]
        if len(opts.names) != len(first):
            raise ValueError(
                f"the first row has {len(first)} field(s) but csv.names lists "
                f"{len(opts.names)} name(s) {list(opts.names)}; give one name per column"
            )
        return list(opts.names)
    names = [n.strip() for n in first]
    if any(n == "" for n in names):
        position = names.index("") + 1
        raise ValueError(f"header column {position} has no name; give every column a name")
    return names


def _separator_hint(names: list[str], opts: CsvOptions) -> str | None:
    """A one-column header that splits on another separator means the wrong separator."""
    if len(names) != 1 or not opts.has_header:
        return None
    for other in _OTHER_SEPARATORS:
        parts = [p for p in names[0].split(other) if p.strip()]
        if other != opts.separator and len(parts) > 1:
            return (
                f"the header has one column {names[0][:80]!r}, which splits on {other!r} into "
                f"{len(parts)} names; the file seems to use {other!r} as separator, but the "
                f"source's csv.separator is {opts.separator!r}; set csv.separator: {other!r} "
                "for this source, or export the file with the expected separator"
            )
    return None


def _arrow_csv(
    path: Path, opts: CsvOptions, names: list[str], bad: list[BadLine], *, use_threads: bool
) -> Any:
    """Read with pyarrow; a row longer than a block is retried with larger blocks."""
    import pyarrow as pa

    block = _BLOCK_BYTES
    while True:
        bad.clear()
        try:
            return _arrow_csv_once(path, opts, names, bad, use_threads=use_threads, block=block)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise
            if block >= _MAX_BLOCK_BYTES:
                return (
                    f"a row is longer than {_MAX_BLOCK_BYTES >> 20} MiB, more than the reader "
                    "takes; check the file's quoting (a quote that is never closed makes the "
                    "rest of the file one field)"
                )
            block *= 4


def _arrow_csv_once(
    path: Path,
    opts: CsvOptions,
    names: list[str],
    bad: list[BadLine],
    *,
    use_threads: bool,
    block: int,
) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def on_bad_row(row: Any) -> str:
        bad.append(BadLine(row.number, _ragged_reason(row, opts), row.text[:500]))
        return "skip"

    read = pacsv.ReadOptions(
        column_names=names,
        skip_rows=opts.skip_rows + (1 if opts.has_header else 0),
        encoding=opts.encoding,
        use_threads=use_threads,
        block_size=block,
    )
    parse = pacsv.ParseOptions(
        delimiter=opts.separator,
        quote_char=opts.quote_char or False,
        newlines_in_values=True,
        invalid_row_handler=on_bad_row,
    )
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        null_values=[],
        check_utf8=True,
    )
    try:
        return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        text = str(exc)
        if "straddl" in text:
            raise
        if "UTF8" in text or "decode" in text.lower() or isinstance(exc, UnicodeDecodeError):
            return _encoding_error(opts, None)
        return f"the file cannot be parsed as CSV: {first_line(exc)}"


def _ragged_reason(row: Any, opts: CsvOptions) -> str:
    found, expected = row.actual_columns, row.expected_columns
    reason = f"row has {found} field(s), expected {expected}"
    text: str = row.text
    quote = opts.quote_char
    opens_quote = quote is not None and (text.startswith(quote) or opts.separator + quote in text)
    if quote is not None and opens_quote and text.count(quote) % 2 == 1:
        swallowed = text.count("\n")
        more = f", so it swallowed the {swallowed} line(s) after it" if swallowed else ""
        return (
            f"{reason}: a quote ({quote}) opened in this row is never closed{more}; close "
            f"the quote, or double a literal quote as {quote}{quote}"
        )
    if found < expected:
        return f"{reason} (the file may be truncated)"
    return reason


def _quote_open_at_end(
    path: Path, frame: pl.DataFrame, names: list[str], opts: CsvOptions
) -> BadLine | None:
    """The last row, if the file ends inside a quoted last field (pyarrow accepts it)."""
    quote = opts.quote_char
    if quote is None or frame.height == 0:
        return None
    try:
        ascii_like = (quote + opts.separator).encode(opts.encoding) == (
            quote + opts.separator
        ).encode("ascii")
    except UnicodeEncodeError:
        return None
    if not ascii_like:
        return None
    last = frame.get_column(names[-1])[-1]
    if last is None:
        return None
    # An unclosed field is everything from its opening quote to the end of the file.
    tail = (quote + str(last).replace(quote, quote * 2)).encode(opts.encoding)
    size = path.stat().st_size
    start = max(0, size - len(tail) - _SNIFF_BYTES)
    with path.open("rb") as fh:
        fh.seek(start)
        end = fh.read()
    if not end.endswith(tail):
        return None
    before = end[: len(end) - len(tail)]
    if before and before[-1:] not in (opts.separator.encode("ascii"), b"\n", b"\r"):
        return None
    line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
    text = end[line_start:][:500].decode(opts.encoding, errors="replace")
    header_lines = opts.skip_rows + (1 if opts.has_header else 0)
    return BadLine(
        int(frame.get_column(ROW)[-1]) + header_lines,
        f"a quote ({quote}) opened in the last field is never closed, so the file ends "
        "inside quotes (it may be truncated); close the quote, or double a literal quote "
        f"as {quote}{quote}",
        text,
    )


def _record_numbers(height: int, bad: list[BadLine], opts: CsvOptions) -> pl.Expr | pl.Series:
    """1-based record number of each kept row, counting the set-aside rows too."""
    header_lines = opts.skip_rows + (1 if opts.has_header else 0)
    skipped = sorted(b.line - header_lines for b in bad if b.line is not None)
    if not skipped:
        return pl.int_range(1, height + 1, dtype=pl.Int64).alias(ROW)
    numbers: list[int] = []
    record, k = 1, 0
    while len(numbers) < height:
        if k < len(skipped) and skipped[k] == record:
            k += 1
        else:
            numbers.append(record)
        record += 1
    return pl.Series(ROW, numbers, dtype=pl.Int64)


def _encoding_error(opts: CsvOptions, offset: int | None) -> str:
    where = f" at byte {offset}" if offset is not None else ""
    other = "latin-1" if opts.encoding.replace("-", "").lower() == "utf8" else "utf-8"
    return (
        f"the file is not valid {opts.encoding} text{where}; set the source's "
        f"csv.encoding to the file's real encoding (for example {other} or cp1252)"
    )
