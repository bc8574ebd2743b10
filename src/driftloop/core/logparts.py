"""Where the prediction and feedback logs' parts are written and found: a folder of this
machine, or a prefix on S3 when the project's outputs are there (``outputs: s3://...``), so
that a monitor running elsewhere (another container, another machine) reads what every
serving replica logged.

Both keep the layout of :mod:`driftloop.core.predlog` (``date=YYYY-MM-DD/part-*.parquet``).
A part is whole or absent for a reader: on this machine it is written under a hidden name
and renamed; on S3 one PUT is atomic. Part names carry the writer's host, process and a
random tag, so replicas never overwrite each other's parts.

Listing goes by date partition: the day folders are listed first (on S3, one delimited
listing of the log's prefix), and only the days a window can hold are opened.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.core.predlog import PART_GLOB, partition, partition_day
from driftloop.core.urls import ObjectUrl

if TYPE_CHECKING:
    import polars as pl

    from driftloop.core.layout import Output


def writer_tag() -> str:
    """This writer's part of a part's name: host, process and a random tag (unique across
    replicas sharing one store, and across restarts of one)."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return f"{host[:40] or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def is_remote(folder: Output) -> bool:
    return isinstance(folder, ObjectUrl)


def write_part(folder: Output, day: str, name: str, frame: pl.DataFrame) -> Output:
    """Write one part of the log; return where it went. On S3 its failure is a
    :class:`~driftloop.core.errors.StorageError` naming the bucket and key (never a
    credential)."""
    if isinstance(folder, ObjectUrl):
        from driftloop.core.s3outputs import put_object

        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="lz4")
        return put_object(
            str(folder / partition(day) / name), buffer.getvalue(), "application/vnd.apache.parquet"
        )
    target = folder / partition(day)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".{name}.tmp"
    frame.write_parquet(tmp, compression="lz4")
    tmp.rename(target / name)
    return target / name


def _days(folder: Output) -> list[tuple[dt.date, Output]]:
    """The log's date partitions, oldest first (folders driftloop did not write are passed
    over)."""
    if isinstance(folder, ObjectUrl):
        from driftloop.core.s3outputs import list_folders

        names: list[tuple[str, Output]] = [(f.name, f) for f in list_folders(folder)]
    else:
        names = [(d.name, d) for d in (folder.iterdir() if folder.is_dir() else [])]
    found: list[tuple[dt.date, Output]] = []
    for name, where in names:
        day = partition_day(name)
        if day is not None:
            found.append((day, where))
    return sorted(found, key=lambda item: item[0])


def _in_day(where: Output) -> list[Output]:
    if isinstance(where, ObjectUrl):
        from driftloop.core.s3outputs import list_objects

        prefix, suffix = PART_GLOB.split("*")
        return [u for u in list_objects(where, suffix) if u.name.startswith(prefix)]
    return sorted(where.glob(PART_GLOB))


def list_parts(
    folder: Output, since: dt.date | None = None, until: dt.date | None = None
) -> list[Output]:
    """The parts of the days in [since, until] (both included; None: no bound), by day then
    name."""
    parts: list[Output] = []
    for day, where in _days(folder):
        if (since is not None and day < since) or (until is not None and day > until):
            continue
        parts += _in_day(where)
    return parts


def any_parts(folder: Output) -> bool:
    """Whether the log holds a part at all (listing the newest days first)."""
    return any(_in_day(where) for _, where in reversed(_days(folder)))


def read_part(part: Output) -> pl.DataFrame:
    """One part, read by Polars (on S3 with the storage options its address needs)."""
    import polars as pl

    if isinstance(part, Path):
        return pl.read_parquet(part)
    from driftloop.core.layout import scan_parquet

    return scan_parquet(part).collect()
