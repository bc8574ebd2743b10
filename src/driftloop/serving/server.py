"""The server's parts for one worker: the model slot, the champion thread, the micro-batcher,
the logs and the metrics; started and stopped by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftloop.core.events import Event, ModelLoadFailed, ModelServed
from driftloop.core.layout import Layout
from driftloop.core.spec import Spec
from driftloop.serving.batcher import Job, MicroBatcher
from driftloop.serving.champion import ChampionSource, ChampionWatcher, ModelSlot
from driftloop.serving.logbook import FrameLog
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.model import Scored, ServedModel
from driftloop.serving.ratelimit import RateLimiter
from driftloop.serving.records import Checked
from driftloop.serving.request_ids import RequestIds

log = logging.getLogger(__name__)


@dataclass
class Server:
    """Everything the routes share, created in the lifespan."""

    spec: Spec
    layout: Layout
    slot: ModelSlot
    metrics: ServingMetrics
    batcher: MicroBatcher
    predictions: FrameLog
    feedback: FrameLog
    watcher: ChampionWatcher
    loaded: asyncio.Event  # set once a model is in the slot
    request_ids: RequestIds
    feedback_limit: RateLimiter


def start_server(spec: Spec, layout: Layout) -> Server:
    settings = spec.serving
    metrics = ServingMetrics()
    slot = ModelSlot()

    def dropped(kind: str) -> Any:
        return lambda n: metrics.dropped.labels(kind).inc(n)

    logs = {
        kind: FrameLog(
            folder,
            buffer_rows=settings.log.buffer_rows,
            flush_rows=settings.log.flush_rows,
            flush_seconds=settings.log.flush_seconds,
            on_drop=dropped(kind),
            build=prediction_frames if kind == "predictions" else None,
        )
        for kind, folder in (("predictions", layout.predictions), ("feedback", layout.feedback))
    }

    def scored(model: ServedModel, jobs: list[Job], result: Scored) -> None:
        _observe(metrics, model, jobs, result)

    def answered(model: ServedModel, jobs: list[Job], result: Scored) -> None:
        _log(logs["predictions"], model, jobs, result)

    batcher = MicroBatcher(
        slot,
        max_records=settings.batch_max_records,
        on_scored=scored,
        after_answers=answered,
        max_queued=settings.queue_max_records,
    )
    source = ChampionSource(spec, layout)

    def load(version: str, folder: Path) -> ServedModel:
        from driftloop.models.cache import COMPILED, PACKAGE, read_info

        return ServedModel.load(
            spec.name,
            version,
            folder / PACKAGE,
            unknown_category=settings.unknown_category,
            info=read_info(folder),
            threads=settings.threads_per_worker,
            compiled=folder / COMPILED,
        )

    loop = asyncio.get_running_loop()
    loaded = asyncio.Event()

    def swapped(model: ServedModel, old: ServedModel | None) -> None:
        loop.call_soon_threadsafe(loaded.set)  # requests held for the first model go on
        metrics.swaps.labels("ok").inc()
        metrics.version.set(float(model.version) if model.version.isdigit() else 0)
        _event(
            layout,
            spec.state.url,
            ModelServed(
                model=model.name,
                version=model.version,
                previous=old.version if old else None,
                origin=model.info.get("origin"),
                seconds=model.info.get("swap_seconds"),
                at=model.info.get("served_since"),  # epoch seconds of the swap
                pid=os.getpid(),
            ),
        )

    def failed(version: str, reason: str) -> None:
        metrics.swaps.labels("failed").inc()
        current = slot.current
        _event(
            layout,
            spec.state.url,
            ModelLoadFailed(
                model=spec.name,
                version=version,
                reason=reason,
                serving=current.version if current else None,
                pid=os.getpid(),
            ),
        )

    watcher = ChampionWatcher(
        source,
        slot,
        poll_seconds=settings.poll_seconds,
        events_poll_seconds=settings.events_poll_seconds,
        load=load,
        on_swap=swapped,
        on_failure=failed,
    )
    server = Server(
        spec,
        layout,
        slot,
        metrics,
        batcher,
        logs["predictions"],
        logs["feedback"],
        watcher,
        loaded,
        RequestIds.for_project(layout.state_dir),
        RateLimiter(
            settings.feedback_limit.labels_per_second,
            settings.feedback_limit.burst,
            clock=loop.time,
        ),
    )
    for frame_log in logs.values():
        frame_log.start()
    batcher.start()
    watcher.start()
    return server


async def stop_server(server: Server) -> None:
    server.watcher.stop()
    await server.batcher.stop()
    for frame_log in (server.predictions, server.feedback):
        try:  # one log that cannot be written must not cost the other its rows
            frame_log.close()
        except Exception:
            log.exception("writing %s at shutdown failed", frame_log.folder)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _observe(metrics: ServingMetrics, model: ServedModel, jobs: list[Job], result: Scored) -> None:
    """Metrics for a scored batch (on the prediction thread, before the answers)."""
    metrics.batch.observe(sum(len(j.records) for j in jobs))
    metrics.observe_predictions(result.labels, result.proba, model.classes)


def _log(predictions: FrameLog, model: ServedModel, jobs: list[Job], result: Scored) -> None:
    """Hand a scored batch to the prediction log (on the event loop, after the answers): its
    rows are made into a frame by the log's writer thread (:func:`prediction_frames`)."""
    if result.accepted:  # the requests' ids, sizes and times; not their raw records
        held = [(j.request_id, len(j.records), j.received) for j in jobs]
        predictions.append(ScoredBatch(model, held, result))


@dataclass(frozen=True)
class ScoredBatch:
    """A scored micro-batch waiting in the prediction log."""

    model: ServedModel
    requests: list[tuple[str, int, datetime]]  # request id, records, received
    scored: Scored

    @property
    def height(self) -> int:
        return len(self.scored.accepted)


def prediction_frames(batches: list[ScoredBatch]) -> list[pl.DataFrame]:
    """The prediction log's frames for scored batches, in order (on the log's writer thread).

    Consecutive row-path batches of one model (typed rows, every record accepted, no flags)
    become one frame: building a frame costs about the same for one row as for a thousand."""
    frames: list[pl.DataFrame] = []
    run: list[ScoredBatch] = []
    for batch in batches:
        rows_only = batch.scored.checked.typed_frame is None
        if rows_only and (not run or batch.model is run[0].model):
            run.append(batch)
            continue
        if run:
            frames.append(_frame(run[0].model, run))
        run = [batch] if rows_only else []
        if not rows_only:
            frames.append(_frame(batch.model, [batch]))
    if run:
        frames.append(_frame(run[0].model, run))
    return frames


def _frame(model: ServedModel, batches: list[ScoredBatch]) -> pl.DataFrame:
    request_ids = [rid for b in batches for rid, n, _ in b.requests for _ in range(n)]
    index = [k for b in batches for _, n, _ in b.requests for k in range(n)]
    ts = [at for b in batches for _, n, at in b.requests for _ in range(n)]
    if len(batches) == 1:
        return model.log_frame(batches[0].scored, request_ids, index, ts)
    # row-path batches: every record accepted, typed rows, no flags; joined into one
    rows = [r for b in batches for r in b.scored.checked.typed_rows or []]
    probas = [b.scored.proba for b in batches]
    joined = Scored(
        Checked(None, None, {}, {}, rows, model.typed_schema),
        list(range(len(rows))),
        np.concatenate([b.scored.labels for b in batches]),
        None if probas[0] is None else np.vstack(probas),
    )
    return model.log_frame(joined, request_ids, index, ts)


def _event(layout: Layout, url: str | None, event: Event) -> None:
    """Record an event in the state database; serving goes on if it cannot."""
    from driftloop.core.state import StateDB

    try:
        with StateDB(layout.state_db, url=url) as db:
            db.record(event)
    except Exception as exc:
        log.warning("could not record %s in the state database: %s", event.type, exc)
