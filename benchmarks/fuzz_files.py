"""Fuzzed raw files for benchmarks/reliability.py: seeded mutations of a valid CSV or Parquet
file of the synthetic project's contract (t, x1, x2, c, y).

Each mutation is a small named function of (valid data, random generator) to bytes; a file
gets one to three of them in a row (a CSV mutation works on the text, a Parquet one on the
frame or on the written bytes). ``fuzzed_files`` yields (name, bytes, mutations applied).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator

import numpy as np
import polars as pl

COLUMNS = ("t", "x1", "x2", "c", "y")


def valid_frame(rows: int, seed: int) -> pl.DataFrame:
    """Rows that meet the contract (the same shape tests/test_lifecycle.py lands)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    return pl.DataFrame(
        {
            "t": [f"2024-01-{1 + i % 28:02d} 10:{i % 60:02d}:00" for i in range(rows)],
            "x1": x1.round(4),
            "x2": x2.round(4),
            "c": rng.choice(["a", "b", "c"], rows),
            "y": np.where(x1 - x2 > 0, "yes", "no"),
        }
    )


# ---- CSV: mutations of the text (lines) or of the bytes -----------------------------------

Lines = list[str]


def _cell(lines: Lines, rng: random.Random, value: str) -> Lines:
    """One random data cell replaced by ``value``."""
    if len(lines) < 2:
        return lines
    i = rng.randrange(1, len(lines))
    cells = lines[i].split(",")
    cells[rng.randrange(len(cells))] = value
    lines[i] = ",".join(cells)
    return lines


CSV_LINE_MUTATIONS: dict[str, Callable[[Lines, random.Random], Lines]] = {
    "wrong_type": lambda ls, r: _cell(ls, r, r.choice(["abc", "1,5", "yes", "2024-13-45", "--"])),
    "huge_value": lambda ls, r: _cell(ls, r, r.choice(["1e308", "-1e308", "1e400", "9" * 400])),
    "nan_inf": lambda ls, r: _cell(ls, r, r.choice(["NaN", "nan", "inf", "-inf", "Infinity"])),
    "empty_cell": lambda ls, r: _cell(ls, r, ""),
    "long_field": lambda ls, r: _cell(ls, r, "x" * r.choice([1000, 100_000])),
    "open_quote": lambda ls, r: _cell(ls, r, '"unclosed'),
    "quoted_newline": lambda ls, r: _cell(ls, r, '"two\nlines"'),
    "extra_column": lambda ls, r: [ls[0] + ",extra"] + [x + ",1" for x in ls[1:]],
    "missing_column": lambda ls, r: [",".join(x.split(",")[:-1]) for x in ls],
    "renamed_column": lambda ls, r: [ls[0].replace("x1", "X 1"), *ls[1:]],
    "short_row": lambda ls, r: _cell(ls, r, "a,b") if len(ls) < 2 else [*ls[:-1], "1,2"],
    "long_row": lambda ls, r: [*ls, ",".join(["1"] * 9)],
    "header_only": lambda ls, r: ls[:1],
    "duplicate_header": lambda ls, r: [*ls, ls[0]],
    "duplicate_rows": lambda ls, r: ls + ls[1:][: r.randint(1, 20)],
    "blank_lines": lambda ls, r: [x for line in ls for x in (line, "")],
    "reorder_columns": lambda ls, r: [",".join(reversed(x.split(","))) for x in ls],
    "bad_label": lambda ls, r: _cell(ls, r, r.choice(["maybe", "YES", " no"])),
    "bad_time": lambda ls, r: _cell(ls, r, r.choice(["2024-02-30 10:00:00", "yesterday", "0"])),
}


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _junk(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 17, 4096]))


def _flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _insert(data: bytes, rng: random.Random, what: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + what + data[at:]


BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncated": _truncate,
    "binary_junk": _junk,
    "empty": lambda d, r: b"",
    "byte_flips": _flip_bytes,
    "invalid_utf8": lambda d, r: _insert(d, r, r.choice([b"\xff\xfe", b"\xc3\x28", b"\x80"])),
    "nul_bytes": lambda d, r: _insert(d, r, b"\x00" * r.randint(1, 8)),
    "latin1": lambda d, r: d.decode("utf-8").replace("a", "\u00e9").encode("latin-1"),
    "utf16": lambda d, r: d.decode("utf-8").encode("utf-16"),
    "bom": lambda d, r: b"\xef\xbb\xbf" + d,
    "crlf": lambda d, r: d.replace(b"\n", b"\r\n"),
    "no_final_newline": lambda d, r: d.rstrip(b"\n"),
}


def fuzzed_csv(rng: random.Random, seed: int) -> tuple[bytes, list[str]]:
    lines = valid_frame(rng.randint(1, 60), seed).write_csv().splitlines()
    applied: list[str] = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.7:
            name = rng.choice(sorted(CSV_LINE_MUTATIONS))
            lines = CSV_LINE_MUTATIONS[name](lines, rng)
            applied.append(name)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if not applied or rng.random() < 0.35:
        name = rng.choice(sorted(BYTE_MUTATIONS))
        try:
            data = BYTE_MUTATIONS[name](data, rng)
        except UnicodeError:  # latin-1 cannot hold a character another mutation put in
            data = _flip_bytes(data, rng)
            name = "byte_flips"
        applied.append(name)
    return data, applied


# ---- Parquet: mutations of the frame, then maybe of the written bytes ---------------------


def _column(frame: pl.DataFrame, rng: random.Random) -> str:
    return rng.choice(frame.columns)


FRAME_MUTATIONS: dict[str, Callable[[pl.DataFrame, random.Random], pl.DataFrame]] = {
    "list_column": lambda f, r: f.with_columns(pl.concat_list(pl.col(_column(f, r)))),
    "struct_column": lambda f, r: f.with_columns(pl.struct(pl.col("x1"), pl.col("c")).alias("c")),
    "binary_invalid_utf8": lambda f, r: f.with_columns(
        pl.Series("c", [b"\xff\xfe" + str(i).encode() for i in range(f.height)], pl.Binary)
    ),
    "binary_valid": lambda f, r: f.with_columns(pl.col("c").cast(pl.Binary)),
    "string_numbers": lambda f, r: f.with_columns(pl.col("x1").cast(pl.String)),
    "int_label": lambda f, r: f.with_columns(pl.Series("y", list(range(f.height)), pl.Int64)),
    "datetime_typed": lambda f, r: f.with_columns(
        pl.col("t").str.strptime(pl.Datetime, "%Y-%m-%d %H:%M:%S")
    ),
    "date_as_int": lambda f, r: f.with_columns(pl.lit(20240101).alias("t")),
    "nan_inf": lambda f, r: f.with_columns(
        pl.Series(
            "x2",
            [r.choice([float("nan"), float("inf"), -float("inf"), 1.0]) for _ in range(f.height)],
        )
    ),
    "huge_values": lambda f, r: f.with_columns(pl.lit(1e308).alias("x1")),
    "all_null": lambda f, r: f.with_columns(pl.lit(None).alias(_column(f, r))),
    "extra_column": lambda f, r: f.with_columns(pl.lit(1).alias("extra")),
    "missing_column": lambda f, r: f.drop(_column(f, r)),
    "zero_rows": lambda f, r: f.head(0),
    "reordered": lambda f, r: f.select(list(reversed(f.columns))),
    "duplicate_rows": lambda f, r: pl.concat([f, f.head(r.randint(1, 10))]),
    "decimal": lambda f, r: f.with_columns(pl.col("x1").cast(pl.Decimal(20, 4))),
    "categorical": lambda f, r: f.with_columns(pl.col("c").cast(pl.Categorical)),
    "float32": lambda f, r: f.with_columns(pl.col("x2").cast(pl.Float32)),
    "long_string": lambda f, r: f.with_columns(pl.lit("x" * 100_000).alias("c")),
}


def fuzzed_parquet(rng: random.Random, seed: int) -> tuple[bytes, list[str]]:
    frame = valid_frame(rng.randint(1, 60), seed)
    applied: list[str] = []
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(sorted(FRAME_MUTATIONS))
        try:
            frame = FRAME_MUTATIONS[name](frame, rng)
        except pl.exceptions.PolarsError:  # an earlier mutation removed what this one needs
            continue
        applied.append(name)
    out = io.BytesIO()
    frame.write_parquet(out)
    data = out.getvalue()
    if not applied or rng.random() < 0.2:
        name = rng.choice(["truncated", "binary_junk", "empty", "byte_flips"])
        data = BYTE_MUTATIONS[name](data, rng)
        applied.append(name)
    return data, applied


def fuzzed_files(count: int, seed: int, kind: str) -> Iterator[tuple[str, bytes, list[str]]]:
    """``count`` files of ``kind`` ("csv" or "parquet"), the same for the same seed."""
    rng = random.Random(f"{seed}-{kind}")
    make = fuzzed_csv if kind == "csv" else fuzzed_parquet
    for i in range(count):
        data, applied = make(rng, seed * 100_000 + i)
        yield f"f{i:04d}.{kind}", data, applied
