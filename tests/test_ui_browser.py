"""The dashboard in a real browser (headless Chromium, Debian's package) against a running
``driftloop serve``: every view draws its charts with data, a batch opens to its quarantine
reasons, a rollback from the page moves the champion and the server follows it, and the
event log shows a file that lands. Every request the page makes outside the server is refused
and asserted absent. Skips where Chromium is missing (an error under
DRIFTLOOP_REQUIRE_BROWSER=1, as .ci/run sets).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftloop.pipeline import run_stage
from driftloop.serving.client import BackgroundServer, background_server

from .serving_helpers import HANG_GUARD
from .test_lifecycle import land
from .test_reports_browser import browser  # noqa: F401 - the shared Chromium fixture
from .ui_project import build

# the tests share the module's project, server and Chromium: one worker builds them
pytestmark = pytest.mark.xdist_group("ui_browser")
HANG_GUARD_MS = 60_000  # generous: a wait for an event, not a timing


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, BackgroundServer]]:
    project = tmp_path_factory.mktemp("ui-browser")
    build(project)  # the embedded MLflow registry: the server process reads it too
    with background_server(project, log=project / "serve.log", timeout=HANG_GUARD) as server:
        yield project, server


@pytest.fixture
def page(browser: Any, served: tuple[Path, BackgroundServer]) -> Iterator[Any]:  # noqa: F811
    _, server = served
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.asked = []
    tab.errors = []

    def refuse(route: Any) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            tab.asked.append(route.request.url)
            route.abort()

    tab.route("**/*", refuse)
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    tab.set_default_timeout(HANG_GUARD_MS)
    yield tab
    assert tab.asked == [], f"the page asked for something outside the server: {tab.asked}"
    assert tab.errors == []
    tab.close()


def drawn(page: Any, selector: str) -> int:
    """How many SVG shapes under ``selector`` have a drawn area (not empty charts)."""
    return int(
        page.evaluate(
            """(sel) => [...document.querySelectorAll(sel)]
                 .filter(e => { const b = e.getBBox(); return b.width > 0 && b.height > 0; })
                 .length""",
            selector,
        )
    )


def test_every_view_draws_its_data(page: Any, served: tuple[Path, BackgroundServer]) -> None:
    _, server = served
    page.goto(f"{server.url}/ui/now")
    assert page.locator("#champion .big").inner_text().startswith("v")
    assert page.locator("#serving").count() == 1  # the server's own numbers
    page.wait_for_function("() => document.querySelector('#serving').textContent.includes('pid')")
    page.goto(f"{server.url}/ui/data")
    assert drawn(page, "#batch-bars rect.seg-ok") == 3
    assert drawn(page, "#batch-bars rect.seg-quarantined") == 1
    page.goto(f"{server.url}/ui/models")
    assert drawn(page, "#versions-chart polyline, #versions-chart circle") >= 3
    assert drawn(page, "#champion-chart circle") >= 2
    page.goto(f"{server.url}/ui/drift")
    assert drawn(page, "#heatmap rect.cell") >= 4
    assert drawn(page, "#performance circle, #performance polyline") >= 2
    page.goto(f"{server.url}/ui/events")
    assert page.locator("#events tbody tr").count() > 5


def test_a_batch_opens_to_its_quarantine_reasons(
    page: Any, served: tuple[Path, BackgroundServer]
) -> None:
    _, server = served
    page.goto(f"{server.url}/ui/data")
    page.locator("#batch-bars a.bar").first.click()  # the oldest batch: the bad rows
    page.wait_for_selector("#reasons")
    reasons = page.locator("#reasons").inner_text()
    assert "x1" in reasons and "'oops'" in reasons
    assert page.locator("#sample tbody tr").count() == 3


def test_a_rollback_from_the_page_moves_the_champion_and_the_server_follows(
    page: Any, served: tuple[Path, BackgroundServer]
) -> None:
    _, server = served
    serving = httpx.get(f"{server.url}/ready").json()["model"]["version"]
    page.goto(f"{server.url}/ui/models")
    page.fill("#rollback-form input[name=reason]", "the browser test rolls back")
    with page.expect_navigation():  # the page reloads itself to show the new champion
        page.click("#rollback-form button")
        page.wait_for_selector("#action-result.done")
        result = page.locator("#action-result").inner_text()
    assert f"(was v{serving})" in result
    new = result.split("champion: v", 1)[1].split(" ", 1)[0]
    assert new != serving
    decisions = page.locator("#decisions").inner_text()
    assert "the browser test rolls back (from the dashboard)" in decisions
    deadline = time.monotonic() + HANG_GUARD_MS / 1000
    while httpx.get(f"{server.url}/ready").json()["model"]["version"] != new:
        assert time.monotonic() < deadline, "the server did not follow the rollback"
        time.sleep(0.1)


def test_the_event_log_shows_a_file_that_lands(
    page: Any, served: tuple[Path, BackgroundServer]
) -> None:
    project, server = served
    page.goto(f"{server.url}/ui/events")
    rows = page.locator("#events tbody tr").count()
    land(project, "d.csv", 50, seed=3, start_day=20)
    run_stage(project, "ingest")  # the loop's first step for a new file
    page.wait_for_selector("#events tbody tr.new")
    assert page.locator("#events tbody tr").count() > rows
    assert "DataArrived" in page.locator("#events tbody tr").first.inner_text()
