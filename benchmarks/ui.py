"""The dashboard's page weight and time to a usable page, measured in headless Chromium.

    .venv/bin/python benchmarks/ui.py [--demo demo] [--batches 1000] [--versions 100]
                                      [--loads 5] [--screenshots docs/ui]

Two projects:

- the demo project (``driftloop demo --project demo``, made first when the folder has no
  project), served by ``driftloop serve`` (the serving app with the dashboard, the way
  ``driftloop up`` serves it) with traffic going to ``/predict`` meanwhile (two clients
  that never pause: the server is saturated), so the Now view has serving numbers to show;
  then by ``driftloop ui``'s app alone (what the demo's last line tells a person to open;
  no server runs then);
- a project with ``--batches`` batches and ``--versions`` model versions, built fast: three
  real batches from the real code (``driftloop.run``; the registry in this process's
  memory), then the rest written as the stages write them (ledger rows and ``DataArrived``
  events through the state database, each batch's prep manifest and check copied from a
  real one with its own batch id), and the versions registered in the in-memory registry
  with a recorded decision each. It is served by ``driftloop ui``'s app (uvicorn in a
  thread of this process, where the in-memory registry lives).

Each view is loaded ``--loads`` times, each time in a fresh browser context (nothing
cached); the page's own numbers come from the Navigation Timing and Paint Timing APIs:
``usable`` is ``domContentLoadedEventEnd`` (the server-rendered page parsed and its deferred
script run: charts drawn, forms live), ``fcp`` the first contentful paint, ``bytes`` the
encoded bytes of the document and every resource it loaded. Medians are printed, as a table
for docs/benchmarks.md. Every request outside the server is refused and counted (it must
be 0). ``--screenshots DIR`` saves a PNG of each view of the demo project.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
VIEWS = ("now", "data", "models", "drift", "events")
CHROMIUM = "/usr/bin/chromium"
MEASURE = """async () => {
  const n = performance.getEntriesByType('navigation')[0];
  // the paint entry can come after the load event: wait for it (a guard of 5 s)
  const fcp = await new Promise((done) => {
    new PerformanceObserver((found) => {
      const paint = found.getEntriesByName('first-contentful-paint')[0];
      if (paint) done(paint);
    }).observe({ type: 'paint', buffered: true });
    setTimeout(() => done(null), 5000);
  });
  const res = performance.getEntriesByType('resource');
  return {
    ttfb: n.responseStart - n.startTime,
    usable: n.domContentLoadedEventEnd - n.startTime,
    load: n.loadEventEnd - n.startTime,
    fcp: fcp ? fcp.startTime : null,
    bytes: n.encodedBodySize + res.reduce((s, r) => s + r.encodedBodySize, 0),
    requests: 1 + res.length,
    svg: document.querySelectorAll('svg rect, svg circle, svg polyline').length,
  };
}"""

SPEC = {
    "name": "synth",
    "task": "classification",
    "target": "y",
    "time_column": "t",
    "sources": [{"name": "s", "path": "data/raw/s/*.csv"}],
    "contract": {
        "columns": {
            "t": {"dtype": "datetime", "format": "%Y-%m-%d %H:%M:%S", "nullable": False},
            "x1": {"dtype": "float"},
            "x2": {"dtype": "float"},
            "x3": {"dtype": "float"},
            "x4": {"dtype": "float"},
            "c": {"dtype": "str"},
            "y": {"dtype": "str", "allowed": ["no", "yes"], "nullable": False},
        }
    },
    "ingest": {"settle_seconds": 0},
    "retrain": {"every_batches": 1},
    "monitoring": {"permutations": 99},
}


def land(project: Path, name: str, rows: int, seed: int, day: int) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, rows)) + (0.4 * (day > 10))
    c = rng.choice(["a", "b", "c"], rows)
    logit = 1.5 * x[0] - x[1] + 0.5 * x[2] + (c == "a")
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    t = [f"2024-01-{1 + day + i * 6 // rows:02d} 10:{i % 60:02d}:00" for i in range(rows)]
    frame = pl.DataFrame({"t": t, **{f"x{i + 1}": x[i].round(4) for i in range(4)}, "c": c, "y": y})
    folder = project / "data" / "raw" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_csv(folder / name)
    if seed == 1:
        with (folder / name).open("a") as f:
            f.write("2024-01-02 10:00:00,oops,0.1,0.2,0.3,a,yes\n")


def build_big(project: Path, batches: int, versions: int) -> Any:
    """The project of many batches and versions; returns its in-memory registry."""
    from driftloop.core.layout import Layout, read_manifest
    from driftloop.core.spec import load_spec
    from driftloop.core.state import RawFile, StateDB
    from driftloop.pipeline import run
    from driftloop.testing import memory_store

    registry = memory_store("synth")
    spec_data = {**SPEC, "model": {"tracking_uri": registry.uri}}
    project.mkdir(parents=True)
    (project / "driftloop.yaml").write_text(yaml.safe_dump(spec_data, sort_keys=False))
    for i in range(3):
        land(project, f"b{i:04d}.csv", 400, seed=i + 1, day=i * 7)
        result = run(project)
        assert not result.failed, result
    spec, layout = load_spec(project), Layout(project)
    with StateDB(layout.state_db) as db:
        template = db.batches()[-1].batch_id
        quarantined = db.batches()[0].batch_id  # the batch with a bad row
        decision = {
            k: v for k, v in db.decisions(spec.name)[-1].items() if k not in ("id", "ts", "applied")
        }
    prep = read_manifest(layout.processed / quarantined)
    check = read_manifest(layout.batch_checks / template)
    started = time.perf_counter()
    with StateDB(layout.state_db) as db:
        for i in range(3, batches):
            batch_id = f"2024{i:06d}-{i:012x}"
            path = f"data/raw/s/b{i:04d}.csv"
            db.create_batch(batch_id, [RawFile(f"{i:064x}", "s", path, 30_000, batch_id)])
            for stage, folder, manifest in (
                ("prep", layout.processed, prep),
                ("monitor", layout.batch_checks, check),
            ):
                out = Path(folder) / batch_id
                out.mkdir(parents=True)
                (out / "manifest.json").write_text(json.dumps({**manifest, "batch_id": batch_id}))
                (out / "_SUCCESS").write_text("")
                if stage == "prep":  # a few rows of each batch quarantined, as in the template
                    q = layout.quarantine / batch_id
                    shutil.copytree(layout.quarantine / quarantined, q)
        package = project / ".bench-package"
        package.mkdir()
        (package / "model.txt").write_text("a registered version for the dashboard benchmark")
        metric = spec.metric
        for v in range(len(registry.versions()), versions):
            registered = registry.register(
                package,
                params={},
                metrics={f"holdout_{metric}": 0.7 + 0.1 * (v % 7) / 7, f"baseline_{metric}": 0.5},
                tags={"driftloop.batches": ",".join(f"2024{i:06d}" for i in range(10))},
                lineage={},
                spec_text="",
            )
            if v % 2 == 0:
                db.record_decision(
                    {**decision, "version": registered.version, "reason": f"bench {v}"}
                )
                registry.set_alias("champion", registered.version)
    print(f"built {batches} batches, {versions} versions in {time.perf_counter() - started:.1f}s")
    return registry


class ThreadServer:
    """uvicorn in a thread of this process, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from driftloop.serving.client import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def measure(browser: Any, url: str, loads: int, shots: Path | None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for view in VIEWS:
        found: list[dict[str, Any]] = []
        for n in range(loads + 1):  # the first load warms the server's imports: not counted
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            outside: list[str] = []

            def refuse(route: Any, outside: list[str] = outside) -> None:
                if route.request.url.startswith(url + "/"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", refuse)
            # the first load of a worker imports what the view reads with (MLflow's client,
            # seconds on a busy machine): a generous guard for it, and it is not counted
            page.goto(f"{url}/ui/{view}", wait_until="load", timeout=300_000)
            numbers = page.evaluate(MEASURE)
            assert not outside, outside
            assert numbers["svg"] > 0 or view in ("now", "events"), (view, numbers)
            if n:
                found.append(numbers)
            if shots is not None and n == loads:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / f"{view}.png"), full_page=False)
            context.close()
        out[view] = {
            k: statistics.median([float(f[k]) for f in found if f[k] is not None] or [math.nan])
            for k in ("ttfb", "fcp", "usable", "load", "bytes", "requests")
        }
    return out


def table(name: str, found: dict[str, dict[str, float]]) -> None:
    print(f"\n{name}")
    print("| view | usable (ms) | first paint (ms) | server (ms, TTFB) | bytes | requests |")
    print("|---|---:|---:|---:|---:|---:|")
    for view, m in found.items():
        print(
            f"| {view} | {m['usable']:.0f} | {m['fcp']:.0f} | {m['ttfb']:.0f} | "
            f"{m['bytes'] / 1024:.1f} KiB | {m['requests']:.0f} |"
        )


def demo_project(path: Path) -> None:
    if (path / "driftloop.yaml").is_file():
        return
    subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "demo", "--project", str(path)], check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=None, help="the demo project's folder")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from driftloop.serving.client import Traffic, background_server
    from driftloop.ui import create_ui_app

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        if args.demo is not None:
            demo_project(args.demo)
            with background_server(args.demo, log=args.demo / "ui-bench-serve.log") as server:
                traffic = Traffic(server.url, demo_records(args.demo), concurrency=2)
                traffic.start()
                try:
                    time.sleep(3)  # some traffic for the Now view's numbers
                    found = measure(browser, server.url, args.loads, args.screenshots)
                finally:
                    traffic.stop()
            table(f"demo project ({args.demo}), driftloop serve, /predict traffic beside", found)
            # what the demo tells a person to open next: `driftloop ui -p demo`, the dashboard
            # alone (no server running, so the Now view says serving is not answering)
            with ThreadServer(create_ui_app(args.demo)) as s:
                found = measure(browser, s.url, args.loads, None)
            table(f"demo project ({args.demo}), driftloop ui", found)
        if args.batches:
            with tempfile.TemporaryDirectory() as tmp:
                project = Path(tmp) / "big"
                build_big(project, args.batches, args.versions)
                with ThreadServer(create_ui_app(project, metrics_url="http://127.0.0.1:9/")) as s:
                    found = measure(browser, s.url, args.loads, None)
                table(f"{args.batches} batches, {args.versions} versions, driftloop ui", found)
        browser.close()


def demo_records(project: Path) -> list[dict[str, Any]]:
    import polars as pl

    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.serving.records import request_records

    spec, layout = load_spec(project), Layout(project)
    first = sorted(p for p in Path(layout.processed).iterdir() if not p.name.startswith("."))[0]
    return request_records(pl.read_parquet(first / "data.parquet").head(200), spec)


if __name__ == "__main__":
    main()
