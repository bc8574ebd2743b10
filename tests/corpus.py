"""A corpus of bad raw files, generated in code, and what prep must do with each.

Every file belongs to the one source of :data:`CORPUS_SPEC`. For each file the corpus says
what must happen: the whole file is quarantined (with a reason that contains a given
text), some rows are quarantined (record numbers and reason texts), or the file is
accepted. Record numbers count data rows: 1 is the first row after the header.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SOURCE = "orders"
GOOD_FILE = "good.csv"
MAX_FIELD_LENGTH = 1000
COLUMNS = ("id", "day", "amount", "status", "code", "note", "label")
HEADER = ",".join(COLUMNS)

CORPUS_SPEC = f"""\
name: bad-input
task: classification
target: label
id_column: id
sources:
  - name: {SOURCE}
    path: data/raw/{SOURCE}/*.csv
contract:
  max_field_length: {MAX_FIELD_LENGTH}
  columns:
    id: {{dtype: int, nullable: false, min: 1}}
    day: {{dtype: date, format: "%Y-%m-%d"}}
    amount: {{dtype: float, min: 0, max: 10000}}
    status: {{dtype: str, allowed: [new, paid, shipped]}}
    code: {{dtype: str, regex: "^[A-Z]{{3}}-[0-9]{{3}}$"}}
    note: {{dtype: str}}
    label: {{dtype: int, nullable: false, allowed: [0, 1]}}
ingest:
  settle_seconds: 0
model:
  enabled: false
"""


@dataclass(frozen=True)
class BadRow:
    """One record prep must quarantine."""

    row: int  # record number: 1 is the first data row
    reason: str  # text the record's __reason must contain
    line: int | None = None  # rows the reader sets aside: the file line the reason names


@dataclass(frozen=True)
class Expectation:
    """What prep must do with one corpus file."""

    case: str  # what is wrong with the file, in words
    outcome: Literal["file", "rows", "accepted"]
    reason: str = ""  # outcome "file": text the files_quarantined error must contain
    bad_rows: tuple[BadRow, ...] = ()
    good_rows: int = 0  # records that must reach data/processed


def whole(case: str, reason: str) -> Expectation:
    return Expectation(case, "file", reason=reason)


def rows(case: str, good: int, *bad: BadRow) -> Expectation:
    return Expectation(case, "rows", bad_rows=bad, good_rows=good)


def accepted(case: str, good: int) -> Expectation:
    return Expectation(case, "accepted", good_rows=good)


def write_corpus_spec(project: Path) -> Path:
    """Write the corpus's ``driftloop.yaml`` into ``project``; return the raw folder."""
    project.mkdir(parents=True, exist_ok=True)
    (project / "driftloop.yaml").write_text(CORPUS_SPEC, encoding="utf-8")
    raw = project / "data" / "raw" / SOURCE
    raw.mkdir(parents=True, exist_ok=True)
    return raw


class _Ids:
    """Hands out ids so no two rows in the corpus are duplicates of each other."""

    def __init__(self) -> None:
        self.next = 1

    def take(self) -> int:
        self.next += 1
        return self.next - 1


def _fields(i: int) -> list[str]:
    return [
        str(i),
        f"2024-01-{i % 28 + 1:02d}",
        f"{i * 1.5:.2f}",
        ("new", "paid", "shipped")[i % 3],
        f"ABC-{i % 1000:03d}",
        f"note {i}",
        str(i % 2),
    ]


def _good(ids: _Ids, n: int) -> list[list[str]]:
    return [_fields(ids.take()) for _ in range(n)]


def _set(fields: list[str], **values: str) -> list[str]:
    out = list(fields)
    for name, value in values.items():
        out[COLUMNS.index(name)] = value
    return out


def _csv(records: list[list[str]], *, header: str = HEADER, end: str = "\n") -> bytes:
    lines = [header, *(",".join(r) for r in records)]
    return (end.join(lines) + end).encode("utf-8")


def bad_corpus() -> dict[str, tuple[bytes, Expectation]]:
    """Every corpus file's bytes and expectation, by file name."""
    ids = _Ids()
    c: dict[str, tuple[bytes, Expectation]] = {}

    c[GOOD_FILE] = (_csv(_good(ids, 40)), accepted("a clean file", 40))

    # Files that cannot be read as the spec says: quarantined whole.
    c["empty.csv"] = (b"", whole("empty file", "empty (0 bytes)"))
    c["header_only.csv"] = (_csv([]), whole("header only", "header but no data rows"))
    c["blank_lines.csv"] = (b"\n\n\n", whole("only blank lines", "first line is blank"))
    semi = [";".join(r) for r in _good(ids, 3)]
    c["semicolon_separated.csv"] = (
        ("\n".join([HEADER.replace(",", ";"), *semi]) + "\n").encode(),
        whole("';' separator while the spec says ','", "seems to use ';' as separator"),
    )
    c["missing_column.csv"] = (
        _csv(
            [[f for n, f in zip(COLUMNS, r, strict=True) if n != "status"] for r in _good(ids, 3)],
            header=HEADER.replace(",status", ""),
        ),
        whole("a contract column is missing", "missing column(s) ['status']"),
    )
    c["extra_column.csv"] = (
        _csv([[*r, "red"] for r in _good(ids, 3)], header=HEADER + ",colour"),
        whole("a column the contract does not know", "unexpected column(s) ['colour']"),
    )
    latin = _csv(_good(ids, 3)) + "9999,2024-01-01,1.0,new,ABC-001,café,1\n".encode("latin-1")
    c["invalid_utf8.csv"] = (latin, whole("latin-1 bytes in a utf-8 source", "not valid utf-8"))
    c["utf16.csv"] = (
        _csv(_good(ids, 3)).decode().encode("utf-16"),
        whole("UTF-16 text in a utf-8 source", "csv.encoding: utf-16"),
    )
    c["gzip_bytes.csv"] = (
        gzip.compress(_csv(_good(ids, 20)), mtime=0),
        whole("a gzip file named .csv", "gzip-compressed"),
    )
    junk = random.Random(7).randbytes(4096)
    c["random_bytes.csv"] = (junk, whole("random bytes with NULs", "looks binary"))
    c["random_bytes_no_nul.csv"] = (
        junk.replace(b"\x00", b"\x01"),
        whole("random bytes without NULs", "not valid utf-8"),
    )
    c["duplicate_header.csv"] = (
        _csv(_good(ids, 3), header=HEADER.replace("note", "amount")),
        whole("two columns named 'amount'", "repeats column name(s) ['amount']"),
    )
    c["blank_header_name.csv"] = (
        _csv(_good(ids, 3), header=HEADER.replace("code", "")),
        whole("a header cell with no name", "header column 5 has no name"),
    )

    # Files that are read, but some of their rows break the contract or the CSV shape.
    g = _good(ids, 8)
    g[1] = _set(g[1], amount="abc")
    g[3] = _set(g[3], id="x7")
    g[4] = _set(g[4], day="2024-13-45")
    c["wrong_types.csv"] = (
        _csv(g),
        rows(
            "values that are not of the column's type",
            5,
            BadRow(2, "column 'amount' breaks dtype(float): got 'abc'"),
            BadRow(4, "column 'id' breaks dtype(int): got 'x7'"),
            BadRow(5, "column 'day' breaks dtype(date, %Y-%m-%d): got '2024-13-45'"),
        ),
    )
    g = _good(ids, 5)
    c["truncated_last_line.csv"] = (
        _csv(g[:4]) + ",".join(g[4][:3]).encode() + b",pa",
        rows(
            "the last line is cut off mid-way",
            4,
            BadRow(5, "expected 7 (the file may be truncated)", line=6),
        ),
    )
    g = _good(ids, 5)
    g[2] = [*g[2], "surplus"]
    c["too_many_fields.csv"] = (
        _csv(g),
        rows("one row has a field too many", 4, BadRow(3, "row has 8 field(s), expected 7", 4)),
    )
    g = _good(ids, 5)
    g[2] = _set(g[2], note='"never closed')
    c["unterminated_quote.csv"] = (
        _csv(g),
        rows(
            "a quote opened mid-file is never closed and swallows the lines after it",
            2,
            BadRow(3, "opened in this row is never closed, so it swallowed the 2 line(s)", 4),
        ),
    )
    g = _good(ids, 4)
    g[3] = _set(g[3], label='"1')
    c["unterminated_quote_at_end.csv"] = (
        _csv(g),
        rows(
            "the last field opens a quote and the file ends inside it",
            3,
            BadRow(4, "the file ends inside quotes", 5),
        ),
    )
    g = _good(ids, 4)
    g[1] = _set(g[1], note="y" * (MAX_FIELD_LENGTH * 5))
    c["huge_field.csv"] = (
        _csv(g),
        rows(
            f"a field longer than contract.max_field_length ({MAX_FIELD_LENGTH})",
            3,
            BadRow(2, f"column 'note' breaks max_field_length({MAX_FIELD_LENGTH})"),
        ),
    )
    g = _good(ids, 4)
    g[2] = _set(g[2], note='"' + "z" * 3_000_000 + '"')
    c["giant_field.csv"] = (
        _csv(g),
        rows(
            "a 3 MB field, larger than the CSV reader's block",
            3,
            BadRow(3, f"column 'note' breaks max_field_length({MAX_FIELD_LENGTH})"),
        ),
    )
    g = _good(ids, 8)
    g[0] = _set(g[0], amount="-5")
    g[2] = _set(g[2], amount="20000")
    g[5] = _set(g[5], id="0")
    c["out_of_range.csv"] = (
        _csv(g),
        rows(
            "numbers outside the contract's min/max",
            5,
            BadRow(1, "column 'amount' breaks greater_than_or_equal_to(0"),
            BadRow(3, "column 'amount' breaks less_than_or_equal_to(10000"),
            BadRow(6, "column 'id' breaks greater_than_or_equal_to(1"),
        ),
    )
    g = _good(ids, 6)
    g[1] = _set(g[1], status="lost")
    # (a target label outside its list stops the whole batch: tests/test_contract_changes.py)
    g[2] = _set(g[2], status="refunded")
    c["not_allowed.csv"] = (
        _csv(g),
        rows(
            "values outside the contract's allowed list",
            4,
            BadRow(2, "column 'status' breaks isin("),
            BadRow(3, "column 'status' breaks isin("),
        ),
    )
    g = _good(ids, 6)
    g[1] = _set(g[1], id="")
    g[3] = _set(g[3], label="  ")
    c["nulls_in_required.csv"] = (
        _csv(g),
        rows(
            "empty values in columns with nullable: false",
            4,
            BadRow(2, "column 'id' breaks not_nullable: got null"),
            BadRow(4, "column 'label' breaks not_nullable: got null"),
        ),
    )
    g = _good(ids, 5)
    g[1] = _set(g[1], code="abc-12")
    c["regex_mismatch.csv"] = (
        _csv(g),
        rows(
            "a value that does not match the column's regex",
            4,
            BadRow(2, "column 'code' breaks str_matches("),
        ),
    )

    # Files that look odd but are valid: accepted whole.
    c["utf8_bom.csv"] = (
        b"\xef\xbb\xbf" + _csv(_good(ids, 4)),
        accepted("a UTF-8 byte-order mark before the header", 4),
    )
    c["crlf.csv"] = (_csv(_good(ids, 4), end="\r\n"), accepted("CRLF line endings", 4))
    g = _good(ids, 4)
    g[1] = _set(g[1], note='"a, b ""quoted""\nsecond line"')
    c["quoted_fields.csv"] = (
        _csv(g),
        accepted("quoted fields with a separator, a doubled quote and a line break", 4),
    )
    return c


QUOTED_NOTE = 'a, b "quoted"\nsecond line'  # quoted_fields.csv row 2's note, as read


def write_bad_corpus(folder: Path) -> dict[str, Expectation]:
    """Write every corpus file (the good one too) into ``folder``; return the expectations."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Expectation] = {}
    for name, (data, expectation) in bad_corpus().items():
        (folder / name).write_bytes(data)
        expected[name] = expectation
    return expected
