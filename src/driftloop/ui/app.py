"""The dashboard as an app: inside the serving app (``driftloop serve`` and ``up``) or alone
(``driftloop ui``).

In the serving app the Now view reads the serving metrics from the process itself (the same
text ``/metrics`` answers, every worker's when there are several); alone it asks the server
at the spec's ``serving`` address for ``/metrics`` (with ``DRIFTLOOP_UI_METRICS_TOKEN`` as its
bearer token when the server has tokens).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from driftloop.ui.routes import PREFIX, ui_router

METRICS_TOKEN_ENV = "DRIFTLOOP_UI_METRICS_TOKEN"


def with_ui(app: FastAPI, project: Path) -> FastAPI:
    """The serving app of ``project`` with the dashboard under ``/ui``."""

    def metrics(request: Request) -> str | None:
        server = getattr(request.app.state, "server", None)
        return None if server is None else server.metrics.exposition().decode("utf-8")

    app.include_router(ui_router(project, metrics))
    return app


def serving_app_from_environment() -> Any:
    """The factory ``driftloop serve``'s workers call: the serving app with the dashboard."""
    from driftloop.serving.run import PROJECT_ENV, app_from_environment

    return with_ui(app_from_environment(), Path(os.environ[PROJECT_ENV]))


def create_ui_app(project: Path, *, metrics_url: str | None = None) -> FastAPI:
    """The dashboard alone (``driftloop ui``): ``metrics_url`` is the serving metrics to
    show (default: the spec's serving address)."""
    import httpx

    from driftloop.core.spec import load_spec
    from driftloop.serving.auth import load_tokens

    spec = load_spec(project)
    host = spec.serving.host if spec.serving.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = metrics_url or f"http://{host}:{spec.serving.port}/metrics"
    token = os.environ.get(METRICS_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def metrics(request: Request) -> str | None:
        try:
            answer = httpx.get(url, headers=headers, timeout=2.0)
        except httpx.HTTPError:
            return None
        if answer.status_code in (401, 403):
            raise RuntimeError(
                f"{url} answered {answer.status_code}: set {METRICS_TOKEN_ENV} to a token "
                "with the 'metrics' scope"
            )
        answer.raise_for_status()
        return answer.text

    app = FastAPI(title=f"driftloop dashboard: {spec.name}", docs_url=None, redoc_url=None)
    app.state.tokens = load_tokens()
    app.include_router(ui_router(project, metrics))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/now", status_code=307)

    return app
