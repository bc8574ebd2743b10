"""The FastAPI app: thin routes over one worker's parts (:mod:`.server`) and the request
handlers (:mod:`.handlers`).

``create_app(project)`` builds an app for one project folder; nothing happens until its
lifespan starts (the champion thread, the batcher, the log writers). Bad input is answered
with 413 or 422 and a ``detail`` that names the field and the rule, never with a 500; 503
means no model is loaded yet, or too much is waiting to be scored.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from driftloop import __version__
from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.serving.auth import ANY, ApiToken, Tokens, load_tokens, require
from driftloop.serving.handlers import feedback_request, json_response, predict_request
from driftloop.serving.records import record_schema
from driftloop.serving.schemas import FeedbackItem, FeedbackResponse, PredictResponse
from driftloop.serving.server import Server, start_server, stop_server

log = logging.getLogger(__name__)
STARTUP_WAIT_SECONDS = 120.0
Caller = Annotated[ApiToken | None, Depends(require(ANY))]  # any valid token (when tokens are set)


def create_app(project: Path, tokens: Tokens | None = None) -> FastAPI:
    """The serving app for a project folder (reads its driftloop.yaml now, starts nothing).

    ``tokens``: the API tokens; by default those of the environment (:mod:`.auth`).
    """
    project = project.resolve()
    spec = load_spec(project)
    tokens = load_tokens() if tokens is None else tokens

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        began = time.perf_counter()
        server = start_server(spec, Layout(project))
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
            await stop_server(server)

    app = FastAPI(
        title=f"driftloop: {spec.name}",
        version=__version__,  # driftloop's, as --version and the manifests say
        docs_url=None,  # /docs and /redoc are served below from local assets, not a CDN
        redoc_url=None,
        description=(
            f"Predictions from the champion of model '{spec.name}' ({spec.task}, target "
            f"'{spec.target}'). Records are the contract's raw columns; they are checked by "
            "the same rules as the batch pipeline."
        ),
        lifespan=lifespan,
    )
    app.state.tokens = tokens

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            **_AUTH,
            413: {"description": "Body or record count over the limit"},
            422: {"description": "A record breaks the contract; detail names field and rule"},
            503: {"description": "No model loaded yet"},
        },
        openapi_extra=_json_body(record_schema(spec)),
    )
    async def predict(
        request: Request, _: Annotated[ApiToken | None, Depends(require("predict"))]
    ) -> Response:
        """Predict for one record or a list of records (raw contract columns)."""
        return await predict_request(request.app.state.server, request)

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        status_code=202,
        responses={
            **_AUTH,
            404: {"description": "A request id this server did not issue"},
            415: {"description": "The body is not application/json"},
            422: {"description": "A label breaks the target's contract"},
            429: {"description": "Too many labels from this token; see Retry-After"},
        },
        openapi_extra=_json_body(FeedbackItem.model_json_schema()),
    )
    async def feedback(
        request: Request, token: Annotated[ApiToken | None, Depends(require("feedback"))]
    ) -> Response:
        """Store true labels by request id (and record), for realized-performance monitoring.

        The first label of a record is kept; a later one is stored but ignored, unless it is
        sent with ``"correction": true`` by an ``admin`` token."""
        return await feedback_request(request.app.state.server, request, token)

    _offline_docs(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/ready", responses={**_AUTH, 503: {"description": "No model loaded yet"}})
    async def ready(request: Request, _: Caller) -> Response:
        """A model is loaded and warm."""
        server: Server = request.app.state.server
        model = server.slot.current
        if model is None:
            detail = server.watcher.last_error or "loading the champion"
            return json_response({"ready": False, "detail": detail}, 503)
        return json_response(
            {
                "ready": True,
                "model": {"name": model.name, "version": model.version},
                # None until this worker has read the registry's alias once (it serves the
                # cached champion meanwhile)
                "registry_checked_at": server.watcher.registry_checked_at,
            }
        )

    @app.get("/model", responses={**_AUTH, 503: {"description": "No model loaded yet"}})
    async def model_info(request: Request, _: Caller) -> Response:
        """The served version: metrics, training-data lineage, why it is champion."""
        server: Server = request.app.state.server
        model = server.slot.current
        if model is None:
            return json_response(
                {"detail": server.watcher.last_error or "loading the champion"}, 503
            )
        return json_response(
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

    @app.get("/metrics", responses=_AUTH)
    async def metrics(
        request: Request, _: Annotated[ApiToken | None, Depends(require("metrics"))]
    ) -> Response:
        """Prometheus metrics (text exposition format)."""
        server: Server = request.app.state.server
        return Response(
            server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token, or not one of the server's (when tokens are set)"},
    403: {"description": "The token lacks the scope this endpoint needs"},
}


def _json_body(item: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a JSON body of one item or a non-empty list of items (the routes read
    the body themselves, so FastAPI does not derive this)."""
    schema = {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


DOCS_ASSETS = "/docs-assets"


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their JavaScript, CSS and icon served by
    this server (FastAPI's self-hosting recipe; the files come with ``fastapi-offline``), so
    the pages render on a machine without internet access."""
    import fastapi_offline
    from fastapi.openapi.docs import (
        get_redoc_html,
        get_swagger_ui_html,
        get_swagger_ui_oauth2_redirect_html,
    )
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = str(app.openapi_url)
    redirect_url = str(app.swagger_ui_oauth2_redirect_url)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
