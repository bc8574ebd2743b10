"""The request handlers behind /predict and /feedback, and small response helpers.

A handler reads the body itself (bounded by ``serving.max_body_bytes``), so any content type
is read as JSON and an oversized body is refused without reading it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl
from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from driftloop.core.predlog import LABEL, RECORD, REQUEST_ID, TS
from driftloop.serving.batcher import OverloadedError
from driftloop.serving.records import Problem, RequestShapeError, check_labels
from driftloop.serving.schemas import FEEDBACK_LIST, FeedbackItem
from driftloop.serving.server import Server

_REQUEST_ID = "x-request-id"


async def predict_request(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    endpoint = "/predict"
    settings = server.spec.serving
    # every answer names its request, refusals too (a 422 for a JSON type as for a rule)
    request_id = _request_id(request)
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
            request_id,
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
            request_id,
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
            request_id,
        )
    try:
        records = model.contract.records(data)
    except RequestShapeError as exc:
        problems = [p.as_detail() for p in exc.problems]
        return _refuse(server, endpoint, started, 422, "validation", problems, request_id)
    if len(records) > settings.max_records:
        return _refuse(
            server,
            endpoint,
            started,
            413,
            "too_large",
            f"{len(records)} records in one request; serving.max_records is "
            f"{settings.max_records}: split the request",
            request_id,
        )
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
    return _done(
        server, endpoint, started, json_response(payload, headers={_REQUEST_ID: request_id})
    )


async def feedback_request(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    endpoint = "/feedback"
    body = await _read_limited(request, server.spec.serving.max_body_bytes)
    if body is None:
        return _refuse(server, endpoint, started, 413, "too_large", "the body is too large")
    try:
        data = orjson.loads(body)
        items: Any = (
            FEEDBACK_LIST.validate_python(data)
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
    return _done(server, endpoint, started, json_response({"accepted": len(listed)}, 202))


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


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
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
    return _done(server, endpoint, started, json_response(payload, status, headers))


def _done(server: Server, endpoint: str, started: float, response: Response) -> Response:
    server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
    server.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    return response
