"""The prediction and feedback logs: a bounded buffer in memory, written by a background thread.

The request path only appends to a list (under a lock held for that append): a Polars
frame, or rows not yet made into one (anything with a ``height``: the prediction log hands
over each scored batch as it is, and the writer thread builds one frame for all the batches
waiting, with the ``build`` function it was given; building a frame per request cost the
event loop more than scoring the request). A thread writes the buffer as Parquet every
``flush_seconds``, or sooner once ``flush_rows`` rows wait, into
``<folder>/date=YYYY-MM-DD/part-*.parquet`` (the date of each row's ``__ts``, UTC). Between
two flushes it makes the rows handed over into frames every ``build_rows`` rows, without
writing them: a scored record waiting as Python objects (its typed row, its arrays, its
request id) holds about ten times the memory of the same row in a frame, and a busy worker
hands over thousands a second (a buffer of ``buffer_rows``, when the store is down for a
while, would otherwise hold hundreds of megabytes).

The folder is on this machine, or on S3 when the project's outputs are
(:mod:`driftloop.core.logparts`: a file is renamed into place, an object is one PUT, so
readers never see half a part; names are unique per writer, so replicas sharing a bucket
never overwrite each other). Only the thread talks to the store: a request never waits on a
disk or on S3. A write that fails (S3 down, a bucket policy that refuses) keeps its rows
buffered for the next flush; when the store cannot keep up and ``buffer_rows`` are waiting,
new rows are dropped and counted (``dropped``) rather than making requests wait; the count
is exported as a metric and logged. ``close`` writes whatever is left.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from driftloop.core.errors import DriftloopError, first_line
from driftloop.core.logparts import write_part, writer_tag
from driftloop.core.predlog import TS

if TYPE_CHECKING:
    from driftloop.core.layout import Output

log = logging.getLogger(__name__)


class Rows(Protocol):
    """Rows waiting to be made into a frame by the log's ``build`` (at flush time)."""

    @property
    def height(self) -> int: ...


Build = Callable[[list[Any]], list[pl.DataFrame]]

BUILD_ROWS = 2_000  # rows handed over unbuilt before the writer makes them into frames


class FrameLog:
    """Append frames (or :class:`Rows` for ``build``) from any thread; a background thread
    writes them as Parquet."""

    def __init__(
        self,
        folder: Output,
        *,
        buffer_rows: int,
        flush_rows: int,
        flush_seconds: float,
        on_drop: Callable[[int], None] | None = None,
        build: Build | None = None,
        build_rows: int = BUILD_ROWS,
    ) -> None:
        self.folder = folder
        self.buffer_rows = buffer_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.build_rows = build_rows
        self.dropped = 0
        self.written = 0
        self._on_drop = on_drop
        self._build = build
        self._frames: list[pl.DataFrame | Rows] = []
        self._rows = 0
        self._unbuilt = 0  # rows handed over for ``build`` since the last compaction
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one flush or compaction at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._tag = writer_tag()
        self.failures = 0  # flushes that failed (their rows kept, if there was room)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"driftloop-log-{self.folder.name}", daemon=True
        )
        self._thread.start()

    def append(self, frame: pl.DataFrame | Rows) -> bool:
        """Queue rows for writing; False (and counted as dropped) when the buffer is full.

        Anything but a frame is passed to ``build`` when the log is flushed."""
        if not isinstance(frame, pl.DataFrame) and self._build is None:
            raise TypeError(f"{self.folder}: this log takes Polars frames (it has no build)")
        if frame.height == 0:
            return True
        with self._lock:
            if self._rows + frame.height > self.buffer_rows:
                self.dropped += frame.height
                dropped = True
            else:
                self._frames.append(frame)
                self._rows += frame.height
                dropped = False
                if not isinstance(frame, pl.DataFrame):
                    self._unbuilt += frame.height
                full = self._rows >= self.flush_rows or self._unbuilt >= self.build_rows
        if dropped:
            if self._on_drop is not None:
                self._on_drop(frame.height)
            log.warning(
                "%s: buffer full (%d rows waiting); dropped %d row(s), %d so far",
                self.folder,
                self.buffer_rows,
                frame.height,
                self.dropped,
            )
            return False
        if full:
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        with self._lock:
            return self._rows

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and write every row still in memory."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()

    def flush(self) -> int:
        """Write what is buffered now; return the number of rows written."""
        with self._writing:
            return self._flush()

    def compact(self) -> None:
        """Make the rows handed over so far into frames, in place, without writing them."""
        with self._writing:
            with self._lock:
                items, self._frames, self._unbuilt = self._frames, [], 0
            try:
                built = self._made(items)
            except Exception:
                with self._lock:  # as they were, for the flush to try (and report) again
                    self._frames[:0] = items
                raise
            with self._lock:  # before what was appended meanwhile, as they came
                self._frames[:0] = built

    def _flush(self) -> int:
        with self._lock:
            frames, self._frames, self._rows, self._unbuilt = self._frames, [], 0, 0
        if not frames:
            return 0
        try:
            frame = pl.concat(self._made(frames), how="diagonal_relaxed")
            day = pl.col(TS).dt.date()
            parts = list(
                frame.with_columns(day.alias("__day")).partition_by("__day", as_dict=True).items()
            )
        except Exception:
            for f in frames:  # e.g. two models' columns that do not concatenate: keep all
                self._put_back(f)
            raise
        for i, ((value,), part) in enumerate(parts):
            try:
                self._write(part.drop("__day"), str(value))
            except Exception:
                for _, rest in parts[i:]:  # this day and the ones not tried yet
                    self._put_back(rest.drop("__day"))
                raise
            self.written += part.height
        return frame.height

    def _made(self, items: list[pl.DataFrame | Rows]) -> list[pl.DataFrame]:
        """Frames for the buffered items, in order; each run of rows built in one call."""
        frames: list[pl.DataFrame] = []
        run: list[Rows] = []
        for item in items:
            if isinstance(item, pl.DataFrame):
                if run:
                    assert self._build is not None  # append() refuses rows without one
                    frames += self._build(run)
                    run = []
                frames.append(item)
            else:
                run.append(item)
        if run:
            assert self._build is not None
            frames += self._build(run)
        return frames

    def _put_back(self, frame: pl.DataFrame | Rows) -> None:
        """Rows that could not be written wait for the next flush, if there is room."""
        with self._lock:
            if self._rows + frame.height <= self.buffer_rows:
                self._frames.append(frame)
                self._rows += frame.height
                if not isinstance(frame, pl.DataFrame):
                    self._unbuilt += frame.height
                return
            self.dropped += frame.height
        if self._on_drop is not None:
            self._on_drop(frame.height)

    def _write(self, frame: pl.DataFrame, day: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"part-{stamp}-{self._tag}-{next(self._seq):06d}.parquet"
        write_part(self.folder, day, name, frame)

    def _loop(self) -> None:
        due = time.monotonic() + self.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            try:
                if (
                    self._stop.is_set()
                    or time.monotonic() >= due
                    or self.pending >= self.flush_rows
                ):
                    due = time.monotonic() + self.flush_seconds
                    self.flush()
                else:  # woken by build_rows rows handed over
                    self.compact()
            except Exception as exc:  # the log must not take the server down; rows stay
                self.failures += 1
                if not isinstance(exc, DriftloopError):  # not the store's answer: a bug
                    log.exception("%s: writing the log failed", self.folder)
                    continue
                # driftloop's storage errors name the bucket and key and never a credential;
                # the first line only, so a long botocore answer does not flood the log
                log.warning(
                    "%s: writing the log failed (%s: %s); %d row(s) kept for the next "
                    "flush, %d dropped so far",
                    self.folder,
                    type(exc).__name__,
                    first_line(exc),
                    self.pending,
                    self.dropped,
                )
