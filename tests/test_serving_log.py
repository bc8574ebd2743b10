"""The prediction log's buffer: flushed by size and by time, bounded, partitioned by date."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from driftloop.core.predlog import REQUEST_ID, TS
from driftloop.serving.logbook import FrameLog


def rows(n: int, day: datetime, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            TS: [day + timedelta(seconds=i) for i in range(n)],
            REQUEST_ID: [f"r{start + i}" for i in range(n)],
        },
        schema={TS: pl.Datetime("us", "UTC"), REQUEST_ID: pl.String},
    )


def written(folder: Path) -> pl.DataFrame:
    files = sorted(folder.rglob("part-*.parquet"))
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(f) for f in files]).sort(REQUEST_ID)


def test_rows_are_partitioned_by_their_date_and_written_on_close(tmp_path: Path) -> None:
    log = FrameLog(tmp_path, buffer_rows=1000, flush_rows=1000, flush_seconds=60)
    log.start()
    late = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)
    assert log.append(rows(2, late))  # the second row is past midnight
    assert log.append(rows(3, datetime(2026, 11, 28, 12, tzinfo=UTC), start=10))
    assert written(tmp_path).height == 0  # not yet: neither size nor time reached
    log.close()
    days = sorted(p.name for p in tmp_path.iterdir())
    assert days == ["date=2026-11-27", "date=2026-11-28"]
    assert len(list((tmp_path / "date=2026-11-27").glob("*.parquet"))) == 1
    assert written(tmp_path / "date=2026-11-28").height == 4
    assert written(tmp_path)[REQUEST_ID].to_list() == ["r0", "r1", "r10", "r11", "r12"]
    assert log.written == 5 and log.dropped == 0
    assert not list(tmp_path.glob("date=*/.*"))  # no temporary files left behind


def test_a_full_flush_size_wakes_the_writer(tmp_path: Path) -> None:
    log = FrameLog(tmp_path, buffer_rows=1000, flush_rows=10, flush_seconds=60)
    log.start()
    now = datetime.now(UTC)
    log.append(rows(6, now))
    log.append(rows(6, now, start=6))
    deadline = time.monotonic() + 300  # a hang guard, not a speed claim
    while written(tmp_path).height < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written(tmp_path).height == 12
    log.close()


def test_time_flushes_a_small_buffer(tmp_path: Path) -> None:
    log = FrameLog(tmp_path, buffer_rows=1000, flush_rows=1000, flush_seconds=0.1)
    log.start()
    log.append(rows(3, datetime.now(UTC)))
    deadline = time.monotonic() + 300  # a hang guard, not a speed claim
    while written(tmp_path).height < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written(tmp_path).height == 3
    log.close()


def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = FrameLog(
        tmp_path, buffer_rows=5, flush_rows=100, flush_seconds=60, on_drop=dropped.append
    )
    # not started: nothing drains the buffer
    now = datetime.now(UTC)
    assert log.append(rows(4, now))
    assert not log.append(rows(2, now, start=4))
    assert log.dropped == 2 and dropped == [2]
    assert log.pending == 4
    log.close()
    assert written(tmp_path).height == 4


def test_a_failed_write_keeps_the_rows_for_the_next_flush(tmp_path: Path) -> None:
    blocker = tmp_path / "log"
    blocker.write_text("a file where the folder should be")
    log = FrameLog(blocker, buffer_rows=100, flush_rows=100, flush_seconds=60)
    log.append(rows(3, datetime.now(UTC)))
    with pytest.raises(OSError):
        log.flush()
    assert log.pending == 3 and log.dropped == 0
    blocker.unlink()
    assert log.flush() == 3
    assert written(blocker).height == 3


def test_log_columns_never_collide_with_contract_columns() -> None:
    """A model may have inputs called "ts" or "prediction"; the log's own columns start with
    "__" like every column driftloop adds."""
    from types import SimpleNamespace

    import numpy as np

    from driftloop.serving.model import Scored, ServedModel
    from driftloop.serving.records import Checked

    typed = pl.DataFrame({"ts": [1.0, 2.0], "prediction": ["a", "b"], "request_id": [7, 8]})
    checked = Checked(
        features=typed, typed_frame=typed, problems={}, flags={1: ["unknown category"]}
    )
    scored = Scored(
        checked, [0, 1], np.array(["no", "yes"], dtype=object), np.array([[0.9, 0.1], [0.2, 0.8]])
    )
    model = ServedModel("m", "3", SimpleNamespace(classes=["no", "yes"]), contract=None)  # type: ignore[arg-type]
    when = datetime(2026, 11, 28, tzinfo=UTC)
    frame = model.log_frame(scored, ["r1", "r1"], [0, 1], [when, when])
    assert frame.columns == [
        "ts",
        "prediction",
        "request_id",
        "__ts",
        "__request_id",
        "__record",
        "__model_name",
        "__model_version",
        "__prediction",
        "__proba_no",
        "__proba_yes",
        "__flags",
    ]
    assert frame["__prediction"].to_list() == ["no", "yes"]
    assert frame["__flags"].to_list() == [None, "unknown category"]


def test_the_batcher_refuses_work_beyond_its_queue() -> None:
    """Under overload a request gets a 503 at once rather than waiting behind thousands."""
    import asyncio

    from driftloop.serving.batcher import MicroBatcher, OverloadedError
    from driftloop.serving.champion import ModelSlot

    async def scenario() -> None:
        batcher = MicroBatcher(ModelSlot(), max_records=10, on_scored=lambda *a: None, max_queued=5)
        # not started: nothing drains the queue
        waiting = asyncio.ensure_future(
            batcher.score([{}] * 4, single=False, request_id="a", received=datetime.now(UTC))
        )
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await batcher.score([{}] * 2, single=False, request_id="b", received=datetime.now(UTC))
        assert batcher.queued == 4
        waiting.cancel()

    asyncio.run(scenario())


class Pending:
    """Rows handed over unbuilt (as the prediction log hands over scored batches)."""

    def __init__(self, n: int, day: datetime, start: int) -> None:
        self.args = (n, day, start)

    @property
    def height(self) -> int:
        return self.args[0]


def test_rows_handed_over_unbuilt_are_built_in_runs_in_order(tmp_path: Path) -> None:
    """Consecutive pending items reach ``build`` together, frames keep their place, and the
    buffer counts pending rows like built ones."""
    calls: list[int] = []

    def build(items: list[Pending]) -> list[pl.DataFrame]:
        calls.append(len(items))
        return [rows(*item.args) for item in items]

    day = datetime(2026, 12, 2, 9, tzinfo=UTC)
    log = FrameLog(tmp_path, buffer_rows=9, flush_rows=100, flush_seconds=60, build=build)
    assert log.append(Pending(2, day, 0))
    assert log.append(Pending(2, day, 2))
    assert log.append(rows(2, day, start=4))
    assert log.append(Pending(3, day, 6))
    assert not log.append(Pending(1, day, 9))  # over buffer_rows: dropped and counted
    assert (log.pending, log.dropped) == (9, 1)
    assert log.flush() == 9
    assert calls == [2, 1]
    assert written(tmp_path)[REQUEST_ID].to_list() == [f"r{i}" for i in range(9)]
    with pytest.raises(TypeError, match="takes Polars frames"):
        FrameLog(tmp_path, buffer_rows=9, flush_rows=9, flush_seconds=60).append(Pending(1, day, 0))


def test_rows_handed_over_are_made_into_frames_between_flushes(tmp_path: Path) -> None:
    """Every ``build_rows`` rows handed over, the writer builds them (a tenth of the memory
    as Python objects) without writing; the flush then writes them in order."""
    calls: list[int] = []

    def build(items: list[Pending]) -> list[pl.DataFrame]:
        calls.append(len(items))
        return [rows(*item.args) for item in items]

    day = datetime(2026, 12, 3, 9, tzinfo=UTC)
    log = FrameLog(
        tmp_path, buffer_rows=100, flush_rows=100, flush_seconds=600, build=build, build_rows=3
    )
    log.start()
    assert log.append(Pending(2, day, 0))
    assert calls == []  # 2 rows: not yet
    assert log.append(Pending(2, day, 2))
    deadline = time.monotonic() + 300  # a hang guard, not a speed claim
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [2]
    assert written(tmp_path).height == 0  # built, not written
    assert log.pending == 4  # still counted against buffer_rows
    assert log.append(rows(2, day, start=4))
    assert log.append(Pending(1, day, 6))
    log.close()
    assert calls == [2, 1]
    assert written(tmp_path)[REQUEST_ID].to_list() == [f"r{i}" for i in range(7)]
    assert (log.written, log.dropped) == (7, 0)


def test_rows_that_do_not_build_stay_for_the_flush(tmp_path: Path) -> None:
    failing = [True]

    def build(items: list[Pending]) -> list[pl.DataFrame]:
        if failing[0]:
            raise ValueError("two models' columns")
        return [rows(*item.args) for item in items]

    day = datetime(2026, 12, 3, 9, tzinfo=UTC)
    log = FrameLog(tmp_path, buffer_rows=100, flush_rows=100, flush_seconds=600, build=build)
    log.append(Pending(2, day, 0))
    log.append(rows(1, day, start=2))
    with pytest.raises(ValueError):
        log.compact()
    assert log.pending == 3
    failing[0] = False
    assert log.flush() == 3
    assert written(tmp_path)[REQUEST_ID].to_list() == ["r0", "r1", "r2"]
