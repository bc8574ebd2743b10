"""The dashboard's routes: one FastAPI router under ``/ui``, mounted by the serving app
(``driftloop serve``, ``driftloop up``) and by ``driftloop ui`` alone.

Every route is a plain ``def``: FastAPI runs it in its thread pool, so reading the state
database, manifests and the registry never blocks the event loop that answers ``/predict``.
Pages are rendered on the server (Jinja2, inline SVG charts); the only script is
``static/ui.js`` (the live parts: the serving tile, the event log, the promote and rollback
forms), served from the package like the stylesheet: the page asks nothing of the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from driftloop.serving.auth import ApiToken, require
from driftloop.ui import charts
from driftloop.ui.live import Sampler
from driftloop.ui.views import Project

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PREFIX = "/ui"
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
MetricsSource = Callable[[Request], str | None]
Admin = Annotated[ApiToken | None, Depends(require("admin"))]


class AliasChange(BaseModel):
    """A promote or a rollback asked for from the page."""

    version: str | None = Field(default=None, max_length=40)
    reason: str = Field(min_length=1, max_length=500)
    by: str | None = Field(default=None, max_length=100)


@cache
def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def ui_router(project_root: Path, metrics: MetricsSource) -> APIRouter:
    """The dashboard of the project at ``project_root``; ``metrics`` gives the serving
    metrics' exposition text (None when no server answers)."""
    project = Project.open(project_root)
    sampler = Sampler()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def page(name: str, view: str, **values: Any) -> HTMLResponse:
        html = (
            _templates()
            .get_template(name)
            .render(project=project.spec.name, view=view, base=PREFIX, **values)
        )
        return HTMLResponse(html)

    def serving_now(request: Request) -> dict[str, Any]:
        try:
            text = metrics(request)
        except Exception as exc:  # any failure: the tile says why, the page still renders
            return {"error": f"serving metrics unavailable: {exc}"}
        if text is None:
            return {"error": "no server answers at the spec's serving address"}
        return sampler.look(text)

    @router.get("", response_class=RedirectResponse)
    @router.get("/", response_class=RedirectResponse)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/now", status_code=307)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name!r}; there are {sorted(STATIC)}")
        return Response(
            (HERE / "static" / name).read_bytes(),
            media_type=STATIC[name],
            headers={"Cache-Control": "max-age=3600"},
        )

    @router.get("/now", response_class=HTMLResponse)
    def now(request: Request) -> HTMLResponse:
        from driftloop.ui.views import now_view

        return page("now.html", "now", now=now_view(project), serving=serving_now(request))

    @router.get("/now/serving", response_class=HTMLResponse)
    def now_serving(request: Request) -> HTMLResponse:
        return page("serving.html", "now", serving=serving_now(request))

    @router.get("/data", response_class=HTMLResponse)
    def data(page_no: Annotated[int | None, Query(alias="page", ge=1)] = None) -> HTMLResponse:
        from driftloop.ui.views import data_view

        found = data_view(project, page_no)
        bars = charts.batch_bars(
            [
                charts.Bar(
                    b["created_at"][:16].replace("T", " "),
                    b["ok"],
                    b["quarantined"],
                    b["duplicate"],
                    f"{PREFIX}/data/{b['batch_id']}",
                    failed=b["failed"],
                )
                for b in found.get("batches", [])
            ]
        )
        return page("data.html", "data", data=found, bars=bars)

    @router.get("/data/{batch_id}", response_class=HTMLResponse)
    def batch(batch_id: str) -> HTMLResponse:
        from driftloop.core.errors import StateError
        from driftloop.ui.views import batch_view

        try:
            found = batch_view(project, batch_id)
        except StateError as exc:
            raise HTTPException(404, str(exc)) from None
        return page("batch.html", "data", b=found)

    @router.get("/models", response_class=HTMLResponse)
    def models() -> HTMLResponse:
        from driftloop.ui.views import models_view

        found = models_view(project)
        versions = list(reversed(found["versions"]))  # oldest first on the x axis
        chart = charts.line_chart(
            {
                f"holdout {found['metric']}": [
                    charts.Point(f"v{v['version']}", v["holdout"]) for v in versions
                ],
                "baseline": [charts.Point(f"v{v['version']}", v["baseline"]) for v in versions],
            },
            colors=(charts.REF, charts.DUP),
        )
        champion = charts.line_chart(
            {
                f"champion's {found['metric']}": [
                    charts.Point(f"{t['ts'][:16].replace('T', ' ')} v{t['version']}", t["value"])
                    for t in found["timeline"]
                ]
            },
            colors=(charts.OK,),
        )
        return page("models.html", "models", m=found, chart=chart, champion_chart=champion)

    @router.get("/models/{version}", response_class=HTMLResponse)
    def version(version: str) -> HTMLResponse:
        from driftloop.ui.views import version_view

        found = version_view(project, version)
        if found is None:
            raise HTTPException(404, f"model {project.spec.name!r} has no version {version}")
        return page("version.html", "models", v=found)

    def move(change: AliasChange, version: str | None, caller: ApiToken | None) -> JSONResponse:
        from driftloop.core.errors import DriftloopError
        from driftloop.promotion.alias import manual_alias_change

        actor = change.by or (f"ui token {caller.fingerprint}" if caller else None)
        try:
            with project.db() as db:
                decision = manual_alias_change(
                    project.spec,
                    project.layout,
                    db,
                    version=version,
                    why=f"{change.reason} (from the dashboard)",
                    actor=actor,
                )
        except DriftloopError as exc:
            raise HTTPException(400, str(exc)) from None
        log.info(
            "champion moved from the dashboard: v%s -> v%s by %s",
            decision["champion_version"],
            decision["version"],
            decision["actor"],
        )
        return JSONResponse({k: decision[k] for k in _DECISION if k in decision})

    @router.post("/models/promote")
    def promote(change: AliasChange, caller: Admin) -> JSONResponse:
        if not change.version:
            raise HTTPException(422, "promote needs the version to make champion ('version')")
        return move(change, change.version, caller)

    @router.post("/models/rollback")
    def rollback(change: AliasChange, caller: Admin) -> JSONResponse:
        return move(change, None, caller)

    @router.get("/drift", response_class=HTMLResponse)
    def drift(page_no: Annotated[int | None, Query(alias="page", ge=1)] = None) -> HTMLResponse:
        from driftloop.ui.views import drift_view

        found = drift_view(project, page_no)
        checks = found.get("checks", [])
        rows = [c["batch_id"] for c in checks]
        cells = {(c["batch_id"], f): s for c in checks for f, s in c["scores"].items()}
        links = {c["batch_id"]: f"{PREFIX}/data/{c['batch_id']}" for c in checks}
        heat = charts.heatmap(rows, found.get("features", []), cells, links)

        def point(c: dict[str, Any], part: str) -> charts.Point:
            p = c[part]
            return charts.Point(
                c["created_at"][:16].replace("T", " "),
                p.get("value"),
                p.get("low"),
                p.get("high"),
                flagged=bool(p.get("decayed")),
            )

        perf = charts.line_chart(
            {
                f"realized {found.get('metric')}": [point(c, "realized") for c in checks],
                f"estimated {found.get('metric')}": [
                    point(c, "estimated") for c in checks if c["estimated"]
                ],
            },
            reference=next((c["decay_bound"] for c in checks if c["decay_bound"]), None),
            reference_label="decay bound",
        )
        return page("drift.html", "drift", d=found, heat=heat, perf=perf)

    @router.get("/reports/{batch_id}", response_class=HTMLResponse)
    def report(batch_id: str) -> HTMLResponse:
        from driftloop.ui.views import _manifest, _read_text

        manifest = _manifest(project.layout.batch_checks / batch_id)
        html = ((manifest or {}).get("paths") or {}).get("html")
        if not html:
            raise HTTPException(404, f"batch {batch_id!r} has no check report")
        return HTMLResponse(_read_text(project, html))

    @router.get("/events", response_class=HTMLResponse)
    def events(
        type_: Annotated[str | None, Query(alias="type")] = None,
        batch_id: Annotated[str | None, Query(alias="batch")] = None,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> HTMLResponse:
        from driftloop.ui.views import events_view

        types = (type_,) if type_ else ()
        found = events_view(project, types=types, batch_id=batch_id or None, before=before)
        return page("events.html", "events", e=found, type=type_ or "", batch=batch_id or "")

    @router.get("/events/rows")
    def event_rows(
        after: Annotated[int, Query(ge=0)] = 0,
        type_: Annotated[str | None, Query(alias="type")] = None,
        batch_id: Annotated[str | None, Query(alias="batch")] = None,
    ) -> JSONResponse:
        """Events newer than ``after`` (the page's newest), newest first: the live update."""
        from driftloop.ui.views import events_view

        types = (type_,) if type_ else ()
        found = events_view(project, types=types, batch_id=batch_id or None, after=after)
        return JSONResponse({"events": found["events"]})

    return router


_DECISION = ("model", "version", "champion_version", "decision", "reason", "actor", "ts")
