"""The request handlers behind /predict and /feedback, and small response helpers.

A handler reads the body itself (bounded by ``serving.max_body_bytes``), so an oversized
body is refused without reading it all. /predict reads any content type as JSON; /feedback
takes ``application/json`` only (415 otherwise), so a browser's cross-site form or
``text/plain`` POST cannot reach it.

Request ids are issued by the server (:mod:`.request_ids`): unguessable, and checked when a
label names one. A record's first label is the one monitoring uses; a later one is logged but
ignored unless an ``admin`` token sends it as a correction (logged with the token's
fingerprint). Labels are rate-limited per caller (:mod:`.ratelimit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl
from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from driftloop.core.predlog import BY, CORRECTION, LABEL, RECORD, REQUEST_ID, TS
from driftloop.core.redact import redact
from driftloop.serving.auth import ADMIN, ApiToken
from driftloop.serving.batcher import OverloadedError
from driftloop.serving.ratelimit import retry_after
from driftloop.serving.records import Problem, RequestShapeError, check_labels
from driftloop.serving.schemas import FEEDBACK_LIST, FeedbackItem
from driftloop.serving.server import Server

_REQUEST_ID = "x-request-id"


async def predict_request(server: Server, request: Request) -> Response:
    started = time.perf_counter()
    endpoint = "/predict"
    settings = server.spec.serving
    # Every answer names its request, a refusal before the records are known too (a 422 for
    # malformed JSON or a wrong JSON type, as for a broken rule): its id holds 0 records,
    # so no label can be sent for it (made only when refusing: the answer path pays nothing)
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
            server.request_ids.issue(0),
        )
    try:
        body = await _read_limited(request, settings.max_body_bytes)
    except ClientDisconnect:
        return _refuse(
            server, endpoint, started, 408, "body_incomplete", _GONE, server.request_ids.issue(0)
        )
    if body is None:
        return _refuse(
            server,
            endpoint,
            started,
            413,
            "too_large",
            f"the body is over serving.max_body_bytes ({settings.max_body_bytes} bytes); "
            "send fewer records per request",
            server.request_ids.issue(0),
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
            server.request_ids.issue(0),
        )
    try:
        records = model.contract.records(data)
    except RequestShapeError as exc:
        problems = [p.as_detail() for p in exc.problems]
        return _refuse(
            server, endpoint, started, 422, "validation", problems, server.request_ids.issue(0)
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
            server.request_ids.issue(0),
        )
    request_id = server.request_ids.issue(len(records))
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


async def feedback_request(server: Server, request: Request, token: ApiToken | None) -> Response:
    started = time.perf_counter()
    endpoint = "/feedback"
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        wrong = (
            f"/feedback takes a JSON body with the header 'Content-Type: application/json'; "
            f"got {('Content-Type ' + repr(media[:80])) if media else 'no Content-Type'}"
        )
        return _refuse(server, endpoint, started, 415, "media_type", wrong)
    try:
        body = await _read_limited(request, server.spec.serving.max_body_bytes)
    except ClientDisconnect:
        return _refuse(server, endpoint, started, 408, "body_incomplete", _GONE)
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
    limited = _rate_limited(server, request, token, len(listed), endpoint, started)
    if limited is not None:
        return limited
    if token is not None and ADMIN not in token.scopes and any(i.correction for i in listed):
        needs_admin = (
            "a correction replaces a label already given and needs a token with the 'admin' "
            'scope; send the label without "correction" (the first label of a record is kept)'
        )
        return _refuse(server, endpoint, started, 403, "forbidden", needs_admin)
    problems = _unknown_requests(server, listed)
    if not problems:
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
            CORRECTION: [i.correction for i in listed],
            BY: [token.fingerprint if token else None] * len(listed),
        },
        schema={
            TS: pl.Datetime("us", "UTC"),
            REQUEST_ID: pl.String,
            RECORD: pl.Int32,
            LABEL: pl.String,
            CORRECTION: pl.Boolean,
            BY: pl.String,
        },
    )
    if not server.feedback.append(frame):
        return _refuse(
            server, endpoint, started, 503, "log_full", "the feedback buffer is full; retry shortly"
        )
    return _done(server, endpoint, started, json_response({"accepted": len(listed)}, 202))


def _rate_limited(
    server: Server,
    request: Request,
    token: ApiToken | None,
    labels: int,
    endpoint: str,
    started: float,
) -> Response | None:
    """413 or 429 when the caller's label budget (serving.feedback_limit) does not allow
    ``labels`` more now; None when it does (and they are taken)."""
    limit = server.spec.serving.feedback_limit
    if labels > limit.burst:
        detail = (
            f"{labels} labels in one request; serving.feedback_limit.burst is {limit.burst}: "
            "split the request"
        )
        return _refuse(server, endpoint, started, 413, "too_large", detail)
    caller = (
        token.fingerprint if token else f"address {request.client.host if request.client else '?'}"
    )
    wait = server.feedback_limit.take(caller, labels)
    if wait <= 0:
        return None
    detail = (
        f"too many labels from this caller: serving.feedback_limit allows "
        f"{limit.labels_per_second:g} per second (bursts of {limit.burst}); retry after "
        f"{retry_after(wait)} s"
    )
    response = _refuse(server, endpoint, started, 429, "rate_limited", detail)
    response.headers["Retry-After"] = retry_after(wait)
    return response


def _unknown_requests(server: Server, listed: list[FeedbackItem]) -> list[Problem]:
    """Labels that name a request this server did not answer, or a record it did not hold."""
    problems = []
    for i, item in enumerate(listed):
        held = server.request_ids.records(item.request_id)
        if held is None:
            problems.append(
                Problem(
                    ("body", i, "request_id"),
                    f"request_id {item.request_id!r:.140} was not issued by this server: send "
                    "the request_id that /predict answered (in its body and its X-Request-ID "
                    "header) for the prediction this label is about",
                    "unknown_request_id",
                    item.request_id,
                )
            )
        elif item.record >= held:
            problems.append(
                Problem(
                    ("body", i, "record"),
                    f"request {item.request_id!r} held {held} record(s), so record is 0 to "
                    f"{held - 1}; got {item.record}",
                    "unknown_record",
                    item.record,
                )
            )
    return problems


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (read no further than that).

    Raises ClientDisconnect when the client went away before sending it all (or was closed
    by ``serving.limits.body_timeout_seconds``)."""
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


_GONE = (
    "the connection closed before the whole body arrived (by the client, or by the server "
    "after serving.limits.body_timeout_seconds)"
)


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer; no URI's password leaves the server in one (a registry error quotes
    the tracking URI, and /ready, /model and /predict pass such errors on)."""
    body = orjson.dumps(payload)
    if b"@" in body or b"=" in body:  # what a credential needs; most answers have neither
        body = redact(body.decode()).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


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
