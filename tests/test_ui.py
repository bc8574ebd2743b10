"""The dashboard in process: every view rendered from a real project (its registry in memory)
through FastAPI's TestClient, the actions from the page, the live parts, the charts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.serving.auth import Tokens, parse_tokens
from driftloop.testing import InMemoryRegistry, forget, memory_store
from driftloop.ui import charts, create_ui_app
from driftloop.ui.live import parse, quantile, summary
from driftloop.ui.views import page_of

from .ui_project import build

# the tests share the module's trained project: one worker builds it
pytestmark = pytest.mark.xdist_group("ui")


@pytest.fixture(scope="module")
def registry() -> Iterator[InMemoryRegistry]:
    found = memory_store("synth")
    yield found
    forget(found.uri)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, registry: InMemoryRegistry) -> Path:
    root = tmp_path_factory.mktemp("ui")
    build(root, tracking_uri=registry.uri)
    return root


@pytest.fixture
def client(project: Path) -> TestClient:
    # no server answers at this address: the Now view says so and renders the rest
    return TestClient(create_ui_app(project, metrics_url="http://127.0.0.1:9/metrics"))


def batches_of(project: Path) -> list[str]:
    with StateDB(Layout(project).state_db) as db:
        return [b.batch_id for b in db.batches()]


def event_rows(html: str) -> list[tuple[str, str]]:
    """(id, type) of each event row of the events page."""
    return re.findall(r'<tr data-id="(\d+)"><td>\d+</td><td>[^<]*</td><td>(\w+)</td>', html)


def _alias(project: Path) -> str | None:
    from driftloop.models.registry import CHAMPION, open_registry

    return open_registry(load_spec(project), Layout(project)).alias(CHAMPION)


def test_now_shows_the_champion_the_loop_and_the_last_check(
    client: TestClient, project: Path
) -> None:
    page = client.get("/ui/now")
    assert page.status_code == 200
    html = page.text
    champion = _alias(project)
    assert f">v{champion}</a>" in html
    assert "Nothing needs you" in html  # no failure, no contract change: nothing red
    assert 'class="attention"' not in html
    assert "no server answers" in html  # the serving tile says why it is empty
    assert "Last check" in html and "v" in html
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/now"


def test_data_draws_a_bar_per_batch_and_a_batch_opens_to_its_quarantine(
    client: TestClient, project: Path
) -> None:
    batches = batches_of(project)
    html = client.get("/ui/data").text
    assert html.count('class="bar"') == len(batches) == 3
    assert html.count('class="seg-ok"') == 3
    assert html.count('class="seg-quarantined"') == 1  # only the first batch had bad rows
    first = client.get(f"/ui/data/{batches[0]}").text
    reasons = re.search(r'<table class="list" id="reasons">(.*?)</table>', first, re.S)
    assert reasons is not None
    assert "x1" in reasons.group(1) and "&#39;oops&#39;" in reasons.group(1)  # column, example
    assert "t" in reasons.group(1)
    sample = re.search(r'id="sample">(.*?)</table>', first, re.S)
    assert sample is not None and sample.group(1).count("<tr>") == 1 + 3  # header + 3 rows
    assert "a.csv" in first  # its raw file
    assert client.get("/ui/data/no-such-batch").status_code == 404


def test_models_charts_versions_and_lineage(client: TestClient, project: Path) -> None:
    html = client.get("/ui/models").text
    assert html.count('class="line"') >= 2  # holdout per version, baseline
    assert html.count("<tr") >= 1 + 3  # versions table: header + a row per version
    version = client.get("/ui/models/1").text
    first = batches_of(project)[0]
    assert f"/ui/data/{first}" in version and "a.csv" in version  # lineage to batch and file
    assert client.get("/ui/models/99").status_code == 404


def test_drift_heatmap_and_performance_have_data(client: TestClient, project: Path) -> None:
    html = client.get("/ui/drift").text
    cells = re.findall(r'<rect class="cell', html)
    assert len(cells) >= 4  # checked batches x features (x1, x2, c at least)
    assert '<polyline class="line"' in html or '<circle class="point"' in html
    report = re.search(r'href="/ui/reports/([^"]+)"', html)
    assert report is not None
    opened = client.get(f"/ui/reports/{report.group(1)}")
    assert opened.status_code == 200 and "<svg" in opened.text


def test_rollback_and_promote_from_the_page_are_recorded(client: TestClient, project: Path) -> None:
    before = _alias(project)
    assert client.post("/ui/models/rollback", json={"reason": ""}).status_code == 422
    moved = client.post("/ui/models/rollback", json={"reason": "bad week", "by": "ana"})
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["champion_version"] == before and body["version"] != before
    assert _alias(project) == body["version"]
    spec = load_spec(project)
    with StateDB(Layout(project).state_db) as db:
        last = db.decisions(spec.name)[-1]
    assert (last["decision"], last["actor"]) == ("rollback", "ana")
    assert last["reason"] == "bad week (from the dashboard)"
    back = client.post("/ui/models/promote", json={"version": before, "reason": "it was fine"})
    assert back.status_code == 200 and _alias(project) == before
    missing = client.post("/ui/models/promote", json={"version": "99", "reason": "x"})
    assert missing.status_code == 400 and "no version 99" in missing.json()["detail"]
    html = client.get("/ui/models").text
    assert "bad week (from the dashboard)" in html


def test_actions_need_an_admin_token_when_the_server_has_tokens(project: Path) -> None:
    app = create_ui_app(project, metrics_url="http://127.0.0.1:9/metrics")
    entries = "s3cret-reader-token-1:predict,s3cret-admin-token-22:admin"
    app.state.tokens = Tokens(parse_tokens(entries, str))
    c = TestClient(app)
    assert c.post("/ui/models/rollback", json={"reason": "x"}).status_code == 401
    reader = {"Authorization": "Bearer s3cret-reader-token-1"}
    assert c.post("/ui/models/rollback", json={"reason": "x"}, headers=reader).status_code == 403
    before = _alias(project)
    admin = {"Authorization": "Bearer s3cret-admin-token-22"}
    done = c.post("/ui/models/rollback", json={"reason": "x"}, headers=admin)
    assert done.status_code == 200 and done.json()["actor"].startswith("ui token ")
    assert "s3cret" not in done.text
    c.post("/ui/models/promote", json={"version": before, "reason": "back"}, headers=admin)
    assert _alias(project) == before


def test_events_filter_by_type_and_batch_and_the_live_rows(
    client: TestClient, project: Path
) -> None:
    html = client.get("/ui/events?type=DataArrived").text
    rows = event_rows(html)
    assert len(rows) == 3 and {t for _, t in rows} == {"DataArrived"}
    batch = batches_of(project)[1]
    by_batch = client.get(f"/ui/events?batch={batch}").text
    named = re.findall(r'href="/ui/data/([^"]+)"', by_batch)
    assert named and set(named) == {batch}
    newest = max(int(i) for i, _ in event_rows(client.get("/ui/events").text))
    assert client.get(f"/ui/events/rows?after={newest}").json() == {"events": []}
    with StateDB(Layout(project).state_db) as db:
        db.record_event("RetrainRequested", {"reason": "a test", "batch_id": batch})
    [new] = client.get(f"/ui/events/rows?after={newest}").json()["events"]
    assert (new["type"], new["batch_id"]) == ("RetrainRequested", batch)
    assert client.get(f"/ui/events/rows?after={newest}&type=DataArrived").json()["events"] == []


def test_the_page_asks_only_for_its_own_assets(client: TestClient) -> None:
    for view in ("now", "data", "models", "drift", "events"):
        html = client.get(f"/ui/{view}").text
        urls = re.findall(r'(?:src|href)="([^"#]+)"', html)
        assert urls and all(u.startswith(("/ui", "data:", "?")) for u in urls), urls
    css = client.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "@import" not in css.text and "url(" not in css.text
    assert client.get("/ui/static/../app.py").status_code == 404


def test_the_serving_app_serves_the_dashboard_with_its_own_numbers(project: Path) -> None:
    from driftloop.serving.app import create_app
    from driftloop.ui import with_ui

    app = with_ui(create_app(project, tokens=Tokens()), project)
    with TestClient(app) as c:  # the lifespan loads the champion (from the memory registry)
        record = {"t": "2024-01-02 10:00:00", "x1": 0.1, "x2": 0.2, "c": "a"}
        served = c.post("/predict", json=record)
        assert served.status_code == 200, served.text
        version = served.json()["model"]["version"]
        tile = c.get("/ui/now/serving").text
        assert "1 in all" in tile  # the request above, read from the server's own metrics
        assert f"this worker: v{version}" in tile
        assert f">v{_alias(project)}</a>" in c.get("/ui/now").text


def test_serving_numbers_come_from_the_exposition() -> None:
    from driftloop.serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    for seconds in [0.002] * 98 + [0.2, 0.2]:
        metrics.latency.labels("/predict").observe(seconds)
        metrics.requests.labels("/predict", "200").inc()
    metrics.errors.labels("/predict", "validation").inc(3)
    metrics.version.set(4)
    first = parse(metrics.exposition().decode(), at=10.0)
    shown = summary(first, None)
    assert (shown["rps"], shown["total_requests"], shown["errors"]) == (None, 100, 3)
    # interpolated inside the buckets (1-2.5 ms and 100-250 ms), as Prometheus does
    assert shown["p50_ms"] == pytest.approx(1.0 + 1.5 * 50 / 98)
    assert shown["p99_ms"] == pytest.approx(100.0 + 150.0 * (99 - 98) / 2)
    assert shown["versions"] == {"this worker": "4"}
    for _ in range(50):
        metrics.latency.labels("/predict").observe(0.7)
        metrics.requests.labels("/predict", "200").inc()
    later = summary(parse(metrics.exposition().decode(), at=20.0), first)
    assert later["rps"] == 5.0  # only the last 10 s: all 50 in the 0.5-1 s bucket
    assert later["p50_ms"] == pytest.approx(750.0)
    assert quantile((), 0.5) is None
    assert quantile(((1.0, 0.0), (math.inf, 5.0)), 0.5) == math.inf  # above every bound


def test_pages_and_charts_hold_up_at_many_batches() -> None:
    items = list(range(1000))
    page, shown, pages = page_of(items, None, 60)
    assert (page[-1], len(page), shown, pages) == (999, 60, 1, 17)
    last, shown, _ = page_of(items, 99, 60)
    assert (last[0], shown) == (0, 17)
    bars = charts.batch_bars([charts.Bar(f"b{i}", i, 1, 0, f"/ui/data/b{i}") for i in range(60)])
    assert bars.count('class="bar"') == 60
    assert charts.heatmap([], ["x"], {}, {}) == ""
    assert charts.line_chart({"a": [charts.Point("1", None)]}) == ""
    escaped = charts.heatmap(["<b>"], ["<i>"], {("<b>", "<i>"): (0.5, False)}, {})
    assert "<b>" not in escaped and "&lt;b&gt;" in escaped
