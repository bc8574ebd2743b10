"""Where things live in a project folder, and the atomic-output discipline.

A stage writes its output into a hidden temporary folder beside the final one, writes
``manifest.json`` and then ``_SUCCESS`` last, and renames the folder into place. Readers
ignore any output folder without ``_SUCCESS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Layout:
    """The folders of one project."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "driftloop.yaml"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def promotions(self) -> Path:
        """The promote stage's decisions, one folder per training decided."""
        return self.root / "data" / "promotions"

    @property
    def monitoring(self) -> Path:
        return self.root / "data" / "monitoring"

    @property
    def predictions(self) -> Path:
        """What /predict saw and answered (parquet, partitioned by date)."""
        return self.monitoring / "predictions"

    @property
    def feedback(self) -> Path:
        """True labels sent to /feedback, by request id (parquet, partitioned by date)."""
        return self.monitoring / "feedback"

    @property
    def model_cache(self) -> Path:
        """Registered model packages kept on this machine, so serving starts without a download."""
        return self.state_dir / "models"

    @property
    def state_dir(self) -> Path:
        return self.root / ".driftloop"

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    def relative(self, path: Path) -> str:
        """A path as the user sees it: relative to the project when inside it."""
        try:
            # abspath, not resolve: a raw file may be a symlink to data kept elsewhere
            return path.absolute().relative_to(self.root.absolute()).as_posix()
        except ValueError:
            return str(path)


def is_complete(output_dir: Path) -> bool:
    return (output_dir / SUCCESS).is_file()


def read_manifest(output_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((output_dir / MANIFEST).read_text(encoding="utf-8"))
    return result


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_output(final_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder; when the caller sealed it, rename it to ``final_dir``.

    The caller writes data files into the folder and then calls :func:`seal`. An existing
    ``final_dir`` is the output of an earlier run with another key, so it is stale either
    way: it is replaced only once the new output is complete (a reader never sees a
    half-written folder), and retracted when the new run publishes nothing (left unsealed,
    or an exception).
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / f".tmp-{final_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    published = False
    try:
        yield tmp
        if not is_complete(tmp):
            return
        old = None
        if final_dir.exists():
            old = final_dir.parent / f".old-{final_dir.name}-{uuid.uuid4().hex[:8]}"
            final_dir.rename(old)
        tmp.rename(final_dir)
        published = True
        _fsync_dir(final_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not published:
            retract(final_dir)


def retract(output_dir: Path) -> None:
    """Withdraw a published output: rename it aside (one atomic step), then delete it."""
    if not output_dir.exists():
        return
    old = output_dir.parent / f".old-{output_dir.name}-{uuid.uuid4().hex[:8]}"
    output_dir.rename(old)
    _fsync_dir(output_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def seal(output_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, then ``_SUCCESS`` last."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    (output_dir / MANIFEST).write_text(text + "\n", encoding="utf-8")
    with (output_dir / SUCCESS).open("w", encoding="utf-8") as fh:
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_temporaries(parent: Path) -> None:
    """Remove leftovers of a run that was killed between write and rename."""
    if not parent.is_dir():
        return
    for child in parent.iterdir():
        if child.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(child, ignore_errors=True)


DATA_FILE = "data.parquet"

# LZ4 over zstd: about 1.5 s less per 5M rows written, for files about a third larger.
COMPRESSION: Literal["lz4"] = "lz4"


def parquet_rows(path: Path) -> int:
    """The rows of a Parquet file, from its metadata."""
    import polars as pl

    return int(pl.scan_parquet(path).select(pl.len()).collect().item())
