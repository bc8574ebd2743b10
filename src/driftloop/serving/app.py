"""The FastAPI app: thin routes over the champion slot, the micro-batcher and the logs.

``create_app(project)`` builds an app for one project folder; nothing happens until its
lifespan starts (the champion thread, the batcher, the log writers). Bad input is answered
with 413 or 422 and a ``detail`` that names the field and the rule, never with a 500; 503
means no model is loaded yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from driftloop.layout import Layout
from driftloop.serving.batcher import Job, MicroBatcher, OverloadedError
from driftloop.serving.champion import ChampionSource, ChampionWatcher, ModelSlot
from driftloop.serving.logbook import LABEL, RECORD, REQUEST_ID, TS, FrameLog
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.model import Scored, ServedModel
from driftloop.serving.records import (
    Problem,
    RequestShapeError,
    check_labels,
    record_schema,
)
from driftloop.spec import Spec, load_spec

log = logging.getLogger(__name__)
_REQUEST_ID = "x-request-id"
STARTUP_WAIT_SECONDS = 120.0


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    prediction: str | float = Field(description="Class label, or the predicted value")
    probabilities: dict[str, float] | None = Field(
        None, description="Probability of each class (classifiers)"
    )
    flags: list[str] | None = Field(
        None, description="Remarks on an accepted record (an unknown category, when flagged)"
    )


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    predictions: list[Prediction]


class FeedbackItem(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    record: int = Field(
        0, ge=0, le=2**31 - 1, description="Which record of the request (0 for one record)"
    )
    label: str | int | float | bool = Field(description="The true value of the target")


class FeedbackResponse(BaseModel):
    accepted: int


_FEEDBACK_LIST: TypeAdapter[list[FeedbackItem]] = TypeAdapter(list[FeedbackItem])


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


def create_app(project: Path) -> FastAPI:
    """The serving app for a project folder (reads its driftloop.yaml now, starts nothing)."""
    project = project.resolve()
    spec = load_spec(project)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        began = time.perf_counter()
        server = _start(spec, Layout(project))
        app.state.server = server
        # Accept connections only once the champion is loaded (or known to be missing): with
        # several workers, a worker still loading must not take requests from a ready one.
        await asyncio.to_thread(server.watcher.first_attempt.wait, STARTUP_WAIT_SECONDS)
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise walk it every few thousand requests.
        gc.collect()
        gc.freeze()
        model = server.slot.current
        log.info(
            "accepting requests %.2fs after startup began, serving %s",
            time.perf_counter() - began,
            f"{model.name} v{model.version}" if model else "nothing yet",
        )
        try:
            yield
        finally:
            await _stop(server)

    app = FastAPI(
        title=f"driftloop: {spec.name}",
        description=(
            f"Predictions from the champion of model '{spec.name}' ({spec.task}, target "
            f"'{spec.target}'). Records are the contract's raw columns; they are checked by "
            "the same rules as the batch pipeline."
        ),
        lifespan=lifespan,
    )

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            413: {"description": "Body or record count over the limit"},
            422: {"description": "A record breaks the contract; detail names field and rule"},
            503: {"description": "No model loaded yet"},
        },
        openapi_extra=_json_body(record_schema(spec)),
    )
    async def predict(request: Request) -> Response:
        """Predict for one record or a list of records (raw contract columns)."""
        return await _predict(request.app.state.server, request)

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        status_code=202,
        responses={422: {"description": "A label breaks the target's contract"}},
        openapi_extra=_json_body(FeedbackItem.model_json_schema()),
    )
    async def feedback(request: Request) -> Response:
        """Store true labels by request id (and record), for realized-performance monitoring."""
        return await _feedback(request.app.state.server, request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "No model loaded yet"}})
    async def ready(request: Request) -> Response:
        """A model is loaded and warm."""
        server: Server = request.app.state.server
        model = server.slot.current
        if model is None:
            detail = server.watcher.last_error or "loading the champion"
            return _json({"ready": False, "detail": detail}, 503)
        return _json(
            {
                "ready": True,
                "model": {"name": model.name, "version": model.version},
                # None until this worker has read the registry's alias once (it serves the
                # cached champion meanwhile)
                "registry_checked_at": server.watcher.registry_checked_at,
            }
        )

    @app.get("/model", responses={503: {"description": "No model loaded yet"}})
    async def model_info(request: Request) -> Response:
        """The served version: metrics, training-data lineage, why it is champion."""
        server: Server = request.app.state.server
        model = server.slot.current
        if model is None:
            return _json({"detail": server.watcher.last_error or "loading the champion"}, 503)
        return _json(
            {
                **model.info,
                "name": model.name,
                "version": model.version,
                "task": model.predictor.spec.task,
                "target": model.predictor.spec.target,
                "classes": model.classes,
                "inputs": list(model.contract.columns),
                "pid": os.getpid(),
            }
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition format)."""
        server: Server = request.app.state.server
        return Response(
            server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


def _json_body(item: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a JSON body of one item or a non-empty list of items (the routes read
    the body themselves, so FastAPI does not derive this)."""
    schema = {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _start(spec: Spec, layout: Layout) -> Server:
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
        )
        for kind, folder in (("predictions", layout.predictions), ("feedback", layout.feedback))
    }

    def scored(model: ServedModel, jobs: list[Job], result: Scored) -> None:
        _record(metrics, logs["predictions"], model, jobs, result)

    batcher = MicroBatcher(
        slot,
        max_records=settings.batch_max_records,
        on_scored=scored,
        max_queued=settings.queue_max_records,
    )
    source = ChampionSource(spec, layout)

    def load(version: str, folder: Path) -> ServedModel:
        from driftloop.model_cache import COMPILED, PACKAGE, read_info

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
            "ModelServed",
            {
                "model": model.name,
                "version": model.version,
                "previous": old.version if old else None,
                "origin": model.info.get("origin"),
                "seconds": model.info.get("swap_seconds"),
                "at": model.info.get("served_since"),  # epoch seconds of the swap
                "pid": os.getpid(),
            },
        )

    def failed(version: str, reason: str) -> None:
        metrics.swaps.labels("failed").inc()
        current = slot.current
        _event(
            layout,
            "ModelLoadFailed",
            {
                "model": spec.name,
                "version": version,
                "reason": reason,
                "serving": current.version if current else None,
                "pid": os.getpid(),
            },
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
    )
    for frame_log in logs.values():
        frame_log.start()
    batcher.start()
    watcher.start()
    return server


async def _stop(server: Server) -> None:
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


def _record(
    metrics: ServingMetrics,
    predictions: FrameLog,
    model: ServedModel,
    jobs: list[Job],
    result: Scored,
) -> None:
    """Metrics and the prediction log for a scored batch (on the prediction thread)."""
    metrics.batch.observe(sum(len(j.records) for j in jobs))
    metrics.observe_predictions(result.labels, result.proba, model.classes)
    request_ids = [j.request_id for j in jobs for _ in j.records]
    index = [k for j in jobs for k in range(len(j.records))]
    ts = [j.received for j in jobs for _ in j.records]
    if result.accepted:
        predictions.append(model.log_frame(result, request_ids, index, ts))


async def _predict(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    endpoint = "/predict"
    settings = server.spec.serving
    model = server.slot.current
    if model is None:
        # A worker that has no model yet (the first one is being trained or loaded) holds
        # the request a while rather than failing it: another worker may already answer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.loaded.wait(), settings.first_model_wait_seconds)
        model = server.slot.current
    if model is None:
        return _refuse(
            server,
            endpoint,
            started,
            503,
            "not_ready",
            server.watcher.last_error or "no model is loaded yet; see /ready",
        )
    body = await _read_limited(request, settings.max_body_bytes)
    if body is None:
        return _refuse(
            server,
            endpoint,
            started,
            413,
            "too_large",
            f"the body is over serving.max_body_bytes ({settings.max_body_bytes} bytes); "
            "send fewer records per request",
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _refuse(
            server,
            endpoint,
            started,
            422,
            "bad_json",
            [Problem(("body",), f"not valid JSON: {exc}", "json_invalid").as_detail()],
        )
    try:
        records = model.contract.records(data)
    except RequestShapeError as exc:
        return _refuse(
            server, endpoint, started, 422, "validation", [p.as_detail() for p in exc.problems]
        )
    if len(records) > settings.max_records:
        return _refuse(
            server,
            endpoint,
            started,
            413,
            "too_large",
            f"{len(records)} records in one request; serving.max_records is "
            f"{settings.max_records}: split the request",
        )
    request_id = _request_id(request)
    try:
        answer = await server.batcher.score(
            records,
            single=isinstance(data, dict),
            request_id=request_id,
            received=datetime.now(UTC),
        )
    except OverloadedError as exc:
        detail = f"overloaded: {exc} (serving.queue_max_records); retry shortly"
        return _refuse(server, endpoint, started, 503, "overloaded", detail, request_id)
    server.metrics.records.labels("refused" if answer.problems else "accepted").inc(len(records))
    if answer.problems:
        return _refuse(
            server,
            endpoint,
            started,
            422,
            "validation",
            [p.as_detail() for p in answer.problems],
            request_id,
        )
    if answer.error is not None:
        detail = (
            f"model {answer.model.name} v{answer.model.version} failed on records the "
            f"contract accepted: {answer.error}"
        )
        return _refuse(server, endpoint, started, 500, "model_error", detail, request_id)
    payload = {
        "request_id": request_id,
        "model": {"name": answer.model.name, "version": answer.model.version},
        "predictions": answer.outputs,
    }
    return _done(server, endpoint, started, _json(payload, headers={_REQUEST_ID: request_id}))


async def _feedback(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    endpoint = "/feedback"
    body = await _read_limited(request, server.spec.serving.max_body_bytes)
    if body is None:
        return _refuse(server, endpoint, started, 413, "too_large", "the body is too large")
    try:
        data = orjson.loads(body)
        items: Any = (
            _FEEDBACK_LIST.validate_python(data)
            if isinstance(data, list)
            else FeedbackItem.model_validate(data)
        )
    except orjson.JSONDecodeError as exc:
        problem = Problem(("body",), f"not valid JSON: {exc}", "json_invalid")
        return _refuse(server, endpoint, started, 422, "bad_json", [problem.as_detail()])
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False)
        ]
        return _refuse(server, endpoint, started, 422, "validation", detail)
    listed: list[FeedbackItem] = items if isinstance(items, list) else [items]
    texts, problems = check_labels(server.spec, [i.label for i in listed])
    if problems:
        if not isinstance(items, list):
            problems = [Problem(("body", *p.loc[2:]), p.msg, p.type, p.input) for p in problems]
        return _refuse(
            server, endpoint, started, 422, "validation", [p.as_detail() for p in problems]
        )
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            TS: [now] * len(listed),
            REQUEST_ID: [i.request_id for i in listed],
            RECORD: [i.record for i in listed],
            LABEL: texts,
        },
        schema={
            TS: pl.Datetime("us", "UTC"),
            REQUEST_ID: pl.String,
            RECORD: pl.Int32,
            LABEL: pl.String,
        },
    )
    if not server.feedback.append(frame):
        return _refuse(
            server, endpoint, started, 503, "log_full", "the feedback buffer is full; retry shortly"
        )
    return _done(server, endpoint, started, _json({"accepted": len(listed)}, 202))


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            return None
        return await request.body()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# Request ids: a random prefix per process and a counter, unique across workers and restarts
# (uuid4 reads the OS's entropy on every call, a measurable share of a request's cost).
_ID_PREFIX = uuid.uuid4().hex[:20]
_ID_COUNTER = itertools.count()


def _request_id(request: Request) -> str:
    given = request.headers.get(_REQUEST_ID)
    if given and len(given) <= 128 and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


def _refuse(
    server: Server,
    endpoint: str,
    started: float,
    status: int,
    kind: str,
    detail: Any,
    request_id: str | None = None,
) -> Response:
    server.metrics.errors.labels(endpoint, kind).inc()
    payload: dict[str, Any] = {"detail": detail}
    headers = None
    if request_id is not None:
        payload["request_id"] = request_id
        headers = {_REQUEST_ID: request_id}
    return _done(server, endpoint, started, _json(payload, status, headers))


def _done(server: Server, endpoint: str, started: float, response: Response) -> Response:
    server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
    server.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    return response


def _event(layout: Layout, type_: str, payload: dict[str, Any]) -> None:
    """Record an event in the state database; serving goes on if it cannot."""
    from driftloop.state import StateDB

    try:
        with StateDB(layout.state_db) as db:
            db.record_event(type_, payload)
    except Exception as exc:
        log.warning("could not record %s in the state database: %s", type_, exc)
