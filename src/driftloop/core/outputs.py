"""The commit protocol of a stage's outputs, behind a small interface.

An output (``data/processed/<batch>``, say) is written by an *attempt*: the stage writes its
data files into a place of its own run, then :meth:`OutputStore.seal` writes
``manifest.json`` and publishes the commit marker ``_SUCCESS`` last. Readers trust only
committed outputs (:meth:`OutputStore.is_committed`). An attempt that publishes nothing
(left unsealed, or an exception) leaves nothing visible and withdraws the earlier output,
which is stale either way; an attempt a crash abandoned is removed by
:meth:`OutputStore.sweep`.

:class:`LocalOutputStore` keeps the rename commit: the attempt is a hidden folder beside the
final one (``.tmp-<name>~<pid>~<host>~<random>``) holding data, manifest and ``_SUCCESS``,
renamed into place in one step; a sweep removes only attempts whose process is gone. An
object store has no rename: :class:`~driftloop.core.s3outputs.S3OutputStore` uploads an
attempt under a run-specific prefix and publishes the marker with a conditional put, naming
that prefix; readers resolve a committed output's files through the store
(:meth:`OutputStore.file`).

Outputs are addressed by URL (a :class:`~pathlib.Path` on this machine, an ``s3://`` URL on
a bucket), and the store is chosen from the address (:func:`output_store`), so callers need
no store argument.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from driftloop.core.procs import pid_alive
from driftloop.core.urls import no_store, url_scheme

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"

# What a store that must ask a server which attempt is committed (S3) learned during one
# pass or stage call: a committed output's marker is read once there, not by every reader.
# Only what was seen committed is remembered, and a store updates it with its own commits
# and withdrawals; another worker's change to an output this pass already read is seen by
# the next pass (a reader whose remembered attempt is gone asks again).
_REMEMBERED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "driftloop_remembered_markers", default=None
)


@contextlib.contextmanager
def one_view() -> Iterator[None]:
    """Within the block (a pass, a stage call), remember the commit markers read."""
    if _REMEMBERED.get() is not None:  # nested: the outer block's view
        yield
        return
    token = _REMEMBERED.set({})
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


def remembered() -> dict[str, Any] | None:
    """The markers remembered in the current block, or None outside one."""
    return _REMEMBERED.get()


Address = Path | str


class OutputStore(Protocol):
    """Where stage outputs are written, committed, read and withdrawn."""

    def attempt(self, output: Address) -> AbstractContextManager[Path]:
        """A place of this run's own to write ``output``'s files; committed when the block
        ends sealed, else dropped (and the earlier output withdrawn)."""
        ...

    def seal(self, attempt: Path, manifest: dict[str, Any]) -> None:
        """Write the manifest, then the commit marker last."""
        ...

    def is_committed(self, output: Address) -> bool: ...

    def read_manifest(self, output: Address) -> dict[str, Any]: ...

    def file(self, output: Address, name: str) -> Address:
        """Where a committed output's file is read from (a path, or a URL for Polars)."""
        ...

    def read_bytes(self, output: Address, name: str) -> bytes:
        """A committed output's (small) file."""
        ...

    def retract(self, output: Address) -> None:
        """Withdraw a committed output (readers stop seeing it at once)."""
        ...

    def sweep(self, parent: Address) -> None:
        """Remove what crashed attempts left under ``parent``."""
        ...


class LocalOutputStore:
    """Outputs in a folder of this machine: a rename is the commit."""

    scheme = "file"

    @contextlib.contextmanager
    def attempt(self, output: Address) -> Iterator[Path]:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.parent / f".tmp-{output.name}{_owner()}"
        tmp.mkdir()
        published = False
        try:
            yield tmp
            if not self.is_committed(tmp):
                return
            old = None
            if output.exists():
                old = output.parent / f".old-{output.name}{_owner()}"
                output.rename(old)
            tmp.rename(output)
            published = True
            _fsync_dir(output.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if not published:
                self.retract(output)

    def seal(self, attempt: Path, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        (attempt / MANIFEST).write_text(text + "\n", encoding="utf-8")
        with (attempt / SUCCESS).open("w", encoding="utf-8") as fh:
            fh.flush()
            os.fsync(fh.fileno())

    def is_committed(self, output: Address) -> bool:
        return (Path(output) / SUCCESS).is_file()

    def read_manifest(self, output: Address) -> dict[str, Any]:
        text = (Path(output) / MANIFEST).read_text(encoding="utf-8")
        result: dict[str, Any] = json.loads(text)
        return result

    def file(self, output: Address, name: str) -> Path:
        return Path(output) / name

    def read_bytes(self, output: Address, name: str) -> bytes:
        return (Path(output) / name).read_bytes()

    def retract(self, output: Address) -> None:
        """Rename the output aside (one atomic step), then delete it."""
        output = Path(output)
        if not output.exists():
            return
        old = output.parent / f".old-{output.name}{_owner()}"
        output.rename(old)
        _fsync_dir(output.parent)
        shutil.rmtree(old, ignore_errors=True)

    def sweep(self, parent: Address) -> None:
        try:
            entries = list(os.scandir(parent))  # names only: 10,000s of batch folders
        except OSError:  # no such folder yet
            return
        for entry in entries:
            if entry.name.startswith((".tmp-", ".old-")) and not _in_progress(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)


# An attempt's folder names its owner (``.tmp-<name>~<pid>~<host>~<random>``): a sweep
# removes what a process that is gone left, never the attempt of a live one (another worker,
# a ``driftloop stage`` beside a pass). Another machine's attempts (a shared folder) are
# left for that machine's sweep.
_SEP = "~"


def _owner() -> str:
    return f"{_SEP}{os.getpid()}{_SEP}{socket.gethostname()}{_SEP}{uuid.uuid4().hex[:8]}"


def _in_progress(name: str) -> bool:
    parts = name.rsplit(_SEP, 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False  # an older release's leftover: nobody can be writing it now
    pid, host = int(parts[1]), parts[2]
    return host != socket.gethostname() or pid_alive(pid)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _s3_store() -> OutputStore:
    from driftloop.core.s3outputs import S3OutputStore  # boto3 only when S3 is used

    return S3OutputStore()


# The registry of output stores by URL scheme; tests/test_storage.py runs the commit
# contract over each.
OUTPUT_STORES: dict[str, Callable[[], OutputStore]] = {"file": LocalOutputStore, "s3": _s3_store}


def output_store(address: Address) -> OutputStore:
    """The store an output address (a path, or a URL) belongs to."""
    scheme = "file" if isinstance(address, Path) else url_scheme(address)
    factory = OUTPUT_STORES.get(scheme)
    if factory is None:
        raise no_store(str(address), OUTPUT_STORES, "output")
    return factory()
