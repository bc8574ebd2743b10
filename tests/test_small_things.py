"""Small things a user noticed (issue 11, section 6): one version everywhere, ``/docs``
without internet, ``run --help`` that describes the pass, and a request id on every 422."""

from __future__ import annotations

import importlib.metadata
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from driftloop import __version__
from driftloop.cli import app

from .serving_helpers import Running, record, serving, synthetic_project

ROOT = Path(__file__).parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# the tests share the module's project, server and Chromium: one worker builds them
pytestmark = pytest.mark.xdist_group("small_things")


def test_one_version_everywhere(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.stdout == f"driftloop {__version__}\n"
    assert importlib.metadata.version("driftloop") == __version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # from __init__.py
    assert f"$ driftloop --version\ndriftloop {__version__}\n" in (ROOT / "README.md").read_text()

    from driftloop.serving.app import create_app

    from .serving_helpers import SERVING
    from .test_lifecycle import SPEC

    (tmp_path / "driftloop.yaml").write_text(SPEC + SERVING)
    assert create_app(tmp_path).openapi()["info"]["version"] == __version__


def test_run_help_describes_the_whole_pass() -> None:
    out = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert out.exit_code == 0
    text = " ".join(out.stdout.split())
    steps = ("ingest", "prep", "features", "check each new batch", "train a challenger")
    for step in (*steps, "promotion gate", "1 while a failure is unresolved"):
        assert step in text, (step, text)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_project(tmp_path_factory.mktemp("docs"), versions=1)


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Running]:
    with serving(project) as running:
        yield running


def test_docs_are_served_from_the_server_itself(server: Running) -> None:
    with server.client() as c:
        page = c.get("/docs")
        assert page.status_code == 200
        html = page.text
        assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            got = c.get(f"/docs-assets/{asset}")
            assert got.status_code == 200 and len(got.content) > 10_000, asset
        redoc = c.get("/redoc").text
        assert "/docs-assets/redoc.standalone.js" in redoc and "fonts.googleapis" not in redoc


@pytest.fixture(scope="module")
def browser() -> Any:
    if not CHROMIUM.is_file():
        if os.environ.get("DRIFTLOOP_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and DRIFTLOOP_REQUIRE_BROWSER=1")
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium'); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


def test_docs_render_offline_in_a_browser(browser: Any, server: Running) -> None:
    """Every request to another host is refused, as on a machine without internet: the
    Swagger UI still renders the API's operations."""
    page = browser.new_page()
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_the_server(route: Any) -> None:
        url = route.request.url
        if url.startswith(server.url):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    page.route("**/*", only_the_server)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/docs")
    page.wait_for_selector("text=/predict", timeout=60_000)  # a hang guard, not a timing test
    assert elsewhere == [] and errors == []
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("driftloop: synth")
    page.close()


def test_a_422_for_a_json_type_names_its_request(server: Running, project: Path) -> None:
    """Refusals carry a server-issued request id like every answer; one refused before its
    records are known holds no record, so no label can name it."""
    from driftloop.core.layout import Layout
    from driftloop.serving.request_ids import RequestIds

    ids = RequestIds.for_project(Layout(project).state_dir)
    with server.client() as c:
        for body in ({**record(), "x1": {"nested": 1}}, {**record(), "colour": "red"}):
            got = c.post("/predict", json=body)
            assert got.status_code == 422, got.text
            given = got.json()["request_id"]
            assert got.headers["x-request-id"] == given and ids.records(given) == 0
        bad = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422
        assert bad.headers["x-request-id"] == bad.json()["request_id"]
        assert ids.records(bad.json()["request_id"]) == 0
        rule = c.post("/predict", json={**record(), "t": "yesterday"})  # a rule, not a type
        assert rule.status_code == 422 and ids.records(rule.json()["request_id"]) == 1


def test_replay_keeps_only_what_its_report_needs(tmp_path: Path) -> None:
    """A replay's policy projects (hundreds of times the data) are deleted once their rows
    are in the report; --keep-projects keeps them."""
    import polars as pl

    from driftloop.orchestration.replay import replay

    from .test_lifecycle import SPEC, land

    project = tmp_path / "p"
    (project).mkdir()
    (project / "driftloop.yaml").write_text(SPEC)
    land(tmp_path / "src", "all.csv", 900, seed=3)
    data = tmp_path / "src/data/raw/s/all.csv"
    said: list[str] = []
    cut = {"batch_size": 300, "initial": 600, "policies": ("static",), "say": said.append}
    lean = replay(project, data, out=tmp_path / "lean", **cut)  # type: ignore[arg-type]
    assert sorted(p.name for p in lean.folder.iterdir()) == [
        "replay.csv",
        "replay.html",
        "summary.json",
    ]
    assert pl.read_csv(lean.folder / "replay.csv").height == 1
    assert any("removed its project" in s and "--keep-projects" in s for s in said)
    kept = replay(project, data, out=tmp_path / "kept", keep_projects=True, **cut)  # type: ignore[arg-type]
    assert (kept.folder / "static" / "driftloop.yaml").is_file()
