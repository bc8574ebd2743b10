"""The HTML reports open offline in a real browser (headless Chromium, Debian's package).

Each page is loaded from a file with every network request refused; the test fails if the
page asks for anything that is not itself (a CDN script, a web font, an image), and checks
that the plots render (inline SVG with drawn content) with no script errors.
Where Chromium is not installed the tests skip with the reason; ``.ci/run`` installs it and
sets DRIFTLOOP_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from driftloop.monitoring.run import monitor
from driftloop.pipeline import run

from .helpers import write_spec
from .test_lifecycle import SPEC, land

CHROMIUM = Path("/usr/bin/chromium")
# the tests share the module's Chromium and monitoring report: one worker builds them
pytestmark = pytest.mark.xdist_group("reports_browser")


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


def open_offline(browser: Any, page_file: Path) -> tuple[Any, list[str], list[str]]:
    """The page, the URLs it asked for besides itself, and its script errors."""
    page = browser.new_page()
    asked: list[str] = []
    errors: list[str] = []

    def refuse(route: Any) -> None:
        url = route.request.url
        if url != page_file.as_uri():
            asked.append(url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", refuse)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    return page, asked, errors


@pytest.fixture(scope="module")
def monitoring_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("report")
    write_spec(project, SPEC + "monitoring: {permutations: 199}\n")
    land(project, "a.csv", 800, seed=1)
    assert not run(project).failed
    land(project, "b.csv", 800, seed=7, start_day=10)  # another week, to compare
    assert not run(project).failed
    batch = sorted(
        p for p in (project / "data" / "processed").iterdir() if not p.name.startswith(".")
    )[-1]
    result = monitor(project, current=batch, version="1")
    assert result.html_path is not None
    return result.html_path


def test_the_monitoring_report_opens_offline_with_its_plots(
    browser: Any, monitoring_report: Path
) -> None:
    page, asked, errors = open_offline(browser, monitoring_report)
    assert asked == [] and errors == []
    assert "synth" in page.title()
    svgs = page.locator("svg")
    assert svgs.count() >= 3  # distributions per feature, scores vs thresholds, performance
    drawn = page.evaluate(
        "() => [...document.querySelectorAll('svg')].filter(s => s.getBBox().width > 0).length"
    )
    assert drawn >= 3
    assert page.locator("text=x1").count() > 0  # the features are named on the page
    page.close()


def test_the_replay_chart_opens_offline(browser: Any, tmp_path: Path) -> None:
    from driftloop.core.spec import parse_spec, read_yaml
    from driftloop.orchestration.replay import summarize
    from driftloop.orchestration.replay_html import render

    spec = parse_spec(read_yaml(SPEC))
    rows = [
        {
            "policy": p,
            "batch": b,
            "scored_rows": 100,
            "roc_auc": 0.6 + 0.01 * b * (p != "static"),
            "accuracy": 0.7,
            "retrained": p == "every_batch" or b == 3,
            "promoted": False,
            "reason": "x",
        }
        for p in ("static", "every_batch", "triggered")
        for b in range(1, 6)
    ]
    page_file = tmp_path / "replay.html"
    page_file.write_text(render(rows, summarize(rows, spec), spec))
    page, asked, errors = open_offline(browser, page_file)
    assert asked == [] and errors == []
    assert page.locator("polyline").count() == 6  # roc_auc and accuracy, three policies each
    assert page.locator("circle").count() > 0  # retrains marked
    assert page.locator("table tr").count() == 4  # header + three policies
    page.close()
