"""Built-in example projects behind ``driftloop init --example NAME``.

An example is a hand-written spec plus a seeded generator of raw data in the shape the spec
expects. :func:`write_example` writes the spec and the first batch; :func:`write_batch`
writes one more batch (the next week, optionally drifted), as the outside world would drop
files into ``data/raw/<table>/``. Each file is written under a hidden temporary name and
renamed into place, so a watcher never reads half a file.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import polars as pl

from driftloop.core.errors import InitError
from driftloop.core.layout import Layout
from driftloop.examples import shop

__all__ = ["EXAMPLES", "Example", "get_example", "raw_file", "write_batch", "write_example"]

log = logging.getLogger(__name__)

MAX_BATCH = 9_999  # file names carry the batch as four digits
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"


class Generator(Protocol):
    def __call__(
        self,
        batch: int,
        rows: int,
        *,
        drift: float = ...,
        seed: int = ...,
        known: Mapping[str, pl.DataFrame] | None = ...,
    ) -> dict[str, pl.DataFrame]: ...


@dataclass(frozen=True)
class Example:
    """A built-in example: its spec text, its tables and the generator of their rows."""

    name: str
    summary: str
    spec: str
    tables: tuple[str, ...]  # the first is the primary source
    schemas: Mapping[str, Mapping[str, pl.DataType]]
    generate: Generator
    default_rows: int
    max_rows: int
    carried: tuple[str, ...] = ()  # tables whose earlier files the generator reads back


EXAMPLES: dict[str, Example] = {
    "shop": Example(
        name="shop",
        summary="online shop orders joined to customers; predict whether an order is returned",
        spec=shop.SPEC,
        tables=shop.TABLES,
        schemas=shop.SCHEMAS,
        generate=shop.generate,
        default_rows=shop.DEFAULT_ROWS,
        max_rows=shop.MAX_ROWS,
        carried=("customers",),
    ),
}


def get_example(name: str) -> Example:
    """The registered example called ``name``, or an :class:`InitError` with a hint."""
    example = EXAMPLES.get(name)
    if example is None:
        known = sorted(EXAMPLES)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {known}"
        raise InitError(f"--example {name!r} is not a built-in example; {hint} (known: {known})")
    return example


def raw_file(project: Path, table: str, batch: int) -> Path:
    """Where batch ``batch`` of ``table`` lands: data/raw/<table>/<table>-NNNN.csv."""
    return Layout(project).raw / table / f"{table}-{batch:04d}.csv"


def write_example(project: Path, name: str, *, seed: int = 0) -> None:
    """Write ``driftloop.yaml`` and the first batch of raw data into ``project``."""
    example = get_example(name)
    project.mkdir(parents=True, exist_ok=True)
    _write_atomic(Layout(project).spec, example.spec.encode("utf-8"))
    write_batch(project, name, batch=1, rows=example.default_rows, seed=seed)


def write_batch(
    project: Path, name: str, *, batch: int, rows: int, drift: float = 0.0, seed: int = 0
) -> list[Path]:
    """Write batch ``batch`` of every table of example ``name``; return the files written.

    The generator is seeded with ``seed + batch``, so a batch is reproducible. Earlier
    batches of the example's carried tables (such as customers) are read back so that
    returning customers keep their attributes.
    """
    example = get_example(name)
    _check_batch_arguments(example, batch=batch, rows=rows, drift=drift)
    known = {t: _read_earlier(project, example, t, batch) for t in example.carried}
    frames = example.generate(batch, rows, drift=drift, seed=seed, known=known)
    paths = []
    for table in example.tables:
        path = raw_file(project, table, batch)
        _write_atomic(path, _csv_bytes(frames[table]))
        paths.append(path)
    log.info(
        "example %s batch %d: %s",
        name,
        batch,
        ", ".join(f"{frames[t].height} {t}" for t in example.tables),
    )
    return paths


def _check_batch_arguments(example: Example, *, batch: int, rows: int, drift: float) -> None:
    problems = []
    if not 1 <= batch <= MAX_BATCH:
        problems.append(f"batch must be an integer in 1..{MAX_BATCH}; got {batch!r} instead")
    if not 1 <= rows <= example.max_rows:
        problems.append(f"rows must be an integer in 1..{example.max_rows}; got {rows!r} instead")
    if not 0.0 <= drift <= 1.0:
        problems.append(f"drift must be a number in [0, 1]; got {drift!r} instead")
    if problems:
        raise InitError(f"example {example.name!r}: " + "; ".join(problems))


def _read_earlier(project: Path, example: Example, table: str, batch: int) -> pl.DataFrame:
    """Every file of ``table`` from batches before ``batch``, oldest first."""
    pattern = re.compile(rf"^{re.escape(table)}-(\d{{4}})\.csv$")
    folder = Layout(project).raw / table
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match and int(match.group(1)) < batch:
                found.append((int(match.group(1)), path))
    schema = dict(example.schemas[table])
    frames = []
    for _, path in sorted(found):
        try:
            frames.append(pl.read_csv(path, schema=schema))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InitError(
                f"{path}: cannot read it back as a {example.name!r} {table} file ({exc}); "
                f"expected columns {list(schema)}. Move the file out of {folder} or remove it"
            ) from None
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _csv_bytes(frame: pl.DataFrame) -> bytes:
    text = frame.write_csv(
        datetime_format=DATETIME_FORMAT, date_format=DATE_FORMAT, float_precision=2
    )
    return text.encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden name in the same folder, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)  # os.replace: atomic within one folder
    finally:
        tmp.unlink(missing_ok=True)
