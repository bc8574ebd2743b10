"""Hot swap under load: promotions and rollbacks while another process keeps requesting.

The load comes from a separate process (tests/load_client.py) at constant concurrency. The
test moves the champion alias several times the way a user does (``driftloop models
promote`` / ``rollback``), and then checks, from the load log and the server's
``ModelServed`` events:

- no request failed;
- every response names a version that a worker was serving while the request was in flight;
- a worker only ever swaps to a version the registry named as champion (one it started
  loading may have been superseded by the time it is warm; it then follows the next);
- once the moves are over, every worker serves the final champion (waited for as an event:
  how fast a swap is, is measured by ``benchmarks/latency.py``, not asserted here).

A version that cannot be loaded leaves the old one serving.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.promotion.alias import manual_alias_change

from .serving_helpers import record, serving, synthetic_project

pytestmark = pytest.mark.slow

HANG_GUARD = 600.0  # seconds: a stuck server fails the test, a slow one does not
TWO_WORKERS = """
serving:
  workers: 2
  poll_seconds: 30
  events_poll_seconds: 0.1
  log: {flush_seconds: 1}
"""


def move(project: Path, version: str | None) -> tuple[float, float, str]:
    """Promote ``version`` (or roll back when None); (started, finished, new champion)."""
    spec, layout = load_spec(project), Layout(project)
    started = time.time()
    with StateDB(layout.state_db) as db:
        decision = manual_alias_change(
            spec, layout, db, version=version, why="swap test", actor="test"
        )
    return started, time.time(), str(decision["version"])


def served_events(project: Path) -> list[dict[str, Any]]:
    with StateDB(Layout(project).state_db) as db:
        return [
            e for e in db.events(limit=10_000) if e["type"] in ("ModelServed", "ModelLoadFailed")
        ]


def worker_timelines(events: list[dict[str, Any]]) -> dict[int, list[tuple[float, str]]]:
    out: dict[int, list[tuple[float, str]]] = {}
    for e in events:
        if e["type"] == "ModelServed":
            out.setdefault(e["pid"], []).append((e["at"], e["version"]))
    return out


def serving_during(timeline: list[tuple[float, str]], start: float, end: float) -> set[str]:
    """The versions a worker served at some moment in [start, end]."""
    found = set()
    for i, (since, version) in enumerate(timeline):
        until = timeline[i + 1][0] if i + 1 < len(timeline) else float("inf")
        if since <= end and until >= start:
            found.add(version)
    return found


def test_promotions_and_rollbacks_under_load_fail_no_request(tmp_path: Path) -> None:
    project = synthetic_project(tmp_path / "p", versions=2, extra=TWO_WORKERS)
    with serving(project) as running:
        with httpx.Client(base_url=running.url) as c:
            first = c.get("/ready").json()["model"]["version"]
        log = tmp_path / "load.jsonl"
        load = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("load_client.py")),
                running.url,
                "16",
                "8",
                str(log),
            ]
        )
        time.sleep(1.5)
        changes = []
        for version in (
            "1",
            "2",
            "1",
            None,
            None,
            "2",
        ):  # promote, promote, promote, roll back x2, promote
            changes.append(move(project, version))
            time.sleep(2.0)
        assert load.wait(HANG_GUARD) == 0
        final = changes[-1][2]

        def all_serve_final() -> bool:
            timelines = worker_timelines(served_events(project))
            return len(timelines) == 2 and all(t[-1][1] == final for t in timelines.values())

        deadline = time.monotonic() + HANG_GUARD
        while not all_serve_final():
            assert time.monotonic() < deadline, "the workers never all served the final champion"
            time.sleep(0.1)
        with httpx.Client(base_url=running.url) as c:
            answers = {
                c.post("/predict", json=record()).json()["model"]["version"] for _ in range(20)
            }
        assert answers == {final}
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) > 200
    failed = [r for r in rows if r["status"] != 200]
    assert not failed, failed[:5]

    events = served_events(project)
    assert not [e for e in events if e["type"] == "ModelLoadFailed"]
    timelines = worker_timelines(events)
    assert len(timelines) == 2  # both workers loaded and swapped
    # Each response names a version some worker was serving while it was in flight.
    for r in rows:
        serving_then = set().union(
            *(serving_during(t, r["sent"], r["received"]) for t in timelines.values())
        )
        assert r["version"] in serving_then, r
    # Workers swap only to versions the registry named as champion by then.
    for pid, timeline in timelines.items():
        for at, version in timeline[1:]:
            named = {first} | {v for s, _, v in changes if s <= at}
            assert version in named, (pid, at, version, changes)


def test_a_version_that_cannot_load_leaves_the_old_one_serving(tmp_path: Path) -> None:
    one_worker = TWO_WORKERS.replace("workers: 2", "workers: 1")
    project = synthetic_project(tmp_path / "p", versions=2, extra=one_worker)
    layout = Layout(project)
    with serving(project) as running, running.client() as c:
        before = c.post("/predict", json=record()).json()["model"]["version"]
        broken = "1" if before == "2" else "2"
        # Damage every copy of the other version's fitted pipeline (registry and local cache).
        cached = next(layout.model_cache.glob(f"*/{broken}-*/driftloop/pipeline.skops"))
        good = cached.read_bytes()
        copies = [p for p in project.rglob("pipeline.skops") if p.read_bytes() == good]
        assert len(copies) == 2  # the registry's artifact and the cache entry
        for path in copies:
            path.write_bytes(b"not a model")
        # and its compiled path, so that the server must read the damaged pipeline
        shutil.rmtree(cached.parent.parent / "compiled")
        move(project, broken)
        deadline = time.monotonic() + HANG_GUARD
        failures: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not failures:
            failures = [e for e in served_events(project) if e["type"] == "ModelLoadFailed"]
            time.sleep(0.1)
        assert failures, "the server never tried the broken version"
        assert failures[-1]["version"] == broken and failures[-1]["serving"] == before
        assert failures[-1]["reason"]
        for _ in range(20):
            answer = c.post("/predict", json=record())
            assert answer.status_code == 200 and answer.json()["model"]["version"] == before
        assert c.get("/ready").status_code == 200
        metrics = c.get("/metrics").text
        failed = re.search(r'driftloop_model_swaps_total\{outcome="failed"\} (\d+)\.0', metrics)
        # tried once: a version that failed is not tried again at every poll or event
        assert failed is not None and int(failed.group(1)) == 1, metrics
