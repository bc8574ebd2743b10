"""``driftloop demo``: the lifecycle on built-in data, start to finish, with a timeline.

It writes the built-in ``shop`` example into a fresh folder, runs the pipeline on the first
batch (prep, features, a first model registered in MLflow and made champion), starts
``driftloop serve`` in the background with steady traffic, lands a second batch whose data
has drifted, and runs again: only the new batch is prepared, a challenger is trained on
both, the gate compares it with the champion on the same newest holdout, and the server
swaps to the new champion while the traffic goes on. True labels go to /feedback; stopping
the server flushes its prediction log. It grows with each stage driftloop gains
(monitoring, the event loop).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftloop.pipeline import RunResult, run

EXAMPLE = "shop"


def run_demo(
    project: Path,
    *,
    fresh: bool,
    show: Callable[[RunResult], None],
    console: Any,
    drifted_rows: int = 5_000,
) -> bool:
    """Run the demo; return True when every stage succeeded."""
    from driftloop.examples import write_batch
    from driftloop.init import init_example
    from driftloop.serving.client import background_server

    started = time.perf_counter()

    def step(text: str) -> None:
        console.print(f"[bold][{time.perf_counter() - started:6.2f}s][/bold] {text}")

    if fresh and project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True, exist_ok=True)
    init_example(project, EXAMPLE, force=True)
    step(f"wrote the '{EXAMPLE}' example project in {project}/ (driftloop.yaml + first batch)")

    first = run(project)
    step("pass 1: ingest -> prep -> features -> train -> register -> promotion gate")
    show(first)
    if first.failed:
        return False

    log = project / ".driftloop" / "serving" / "demo-server.log"
    with background_server(project, log=log) as server:
        step(
            f"serving the champion: driftloop serve on {server.url} "
            f"(ready in {server.ready_seconds:.2f}s; API docs at {server.url}/docs)"
        )
        traffic = _start_traffic(project, server.url)
        time.sleep(1.0)
        _report_traffic(traffic.answers, step, "traffic")

        paths = write_batch(project, EXAMPLE, batch=2, rows=drifted_rows, drift=0.8)
        step(f"landed a drifted batch: {', '.join(p.name for p in paths)} (traffic goes on)")
        second = run(project)
        step("pass 2: the new batch is prepared (the first is a cache hit); a challenger is gated")
        show(second)
        swapped = _wait_for_swap(project, traffic.answers, second)
        traffic.stop()
        if swapped is not None:
            step(
                f"hot swap: /predict answered with v{swapped[0]} {swapped[1]:.2f}s after the "
                "promotion, with no restart"
            )
        _report_traffic(traffic.answers, step, "all traffic")
        sent = _send_feedback(project, server.url, traffic.answers)
        step(f"sent {sent} true labels to /feedback (ground truth for monitoring)")
    step(f"server stopped (SIGTERM: the prediction log was flushed); log at {log}")

    third = run(project)
    step("pass 3: nothing new, nothing done" if not third.did_work else "pass 3 did work")

    ok = not (first.failed or second.failed or third.failed)
    _summary(project, console)
    step("done" if ok else "finished with failures (see above)")
    return ok


def _start_traffic(project: Path, url: str) -> Any:
    """Requests at concurrency 4, cycling through the first batch's processed rows."""
    import polars as pl

    from driftloop.layout import Layout
    from driftloop.serving.client import Traffic
    from driftloop.serving.records import request_records
    from driftloop.spec import load_spec

    spec, layout = load_spec(project), Layout(project)
    [batch] = [p for p in layout.processed.iterdir() if not p.name.startswith(".")]
    rows = pl.read_parquet(batch / "data.parquet").head(500)
    traffic = Traffic(url, request_records(rows, spec), concurrency=4)
    traffic.start()
    return traffic


def _report_traffic(answers: list[Any], step: Callable[[str], None], what: str) -> None:
    done = list(answers)
    if not done:
        step(f"{what}: no answers yet")
        return
    failed = sum(1 for a in done if a.status != 200)
    versions = sorted({a.version for a in done if a.version}, key=int)
    seconds = sorted(a.seconds for a in done)
    p50, p99 = seconds[len(seconds) // 2], seconds[min(len(seconds) - 1, len(seconds) * 99 // 100)]
    step(
        f"{what}: {len(done)} requests, {failed} failed, answered by "
        f"{', '.join('v' + v for v in versions)}; latency p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (4 concurrent clients)"
    )


def _wait_for_swap(
    project: Path, answers: list[Any], result: RunResult
) -> tuple[str, float] | None:
    """(new version, seconds from the promotion event to the first answer by it), if promoted."""
    from datetime import datetime

    from driftloop.layout import Layout
    from driftloop.state import StateDB

    train = [r for r in result.reports if r.stage == "train" and r.outcome == "ran"]
    if not train or train[0].manifest["decision"]["decision"] != "promoted":
        return None
    version = str(train[0].manifest["version"])
    with StateDB(Layout(project).state_db) as db:
        event = db.last_event("ModelPromoted")
    decided = datetime.fromisoformat(event["ts"]).timestamp() if event else time.time()
    deadline = time.time() + 20
    while time.time() < deadline:
        first = [a for a in list(answers) if a.version == version]
        if first:
            return version, max(0.0, min(a.sent + a.seconds for a in first) - decided)
        time.sleep(0.05)
    return None


def _send_feedback(project: Path, url: str, answers: list[Any]) -> int:
    """The true labels of answered requests (known here: they are the first batch's rows)."""
    import httpx
    import polars as pl

    from driftloop.layout import Layout
    from driftloop.spec import load_spec

    spec, layout = load_spec(project), Layout(project)
    batches = sorted(p for p in layout.processed.iterdir() if not p.name.startswith("."))
    truth = pl.read_parquet(batches[0] / "data.parquet").head(500)[spec.target].to_list()
    items = [
        {"request_id": a.request_id, "record": 0, "label": truth[a.record]}
        for a in answers[:500]
        if a.status == 200 and a.request_id and truth[a.record] is not None
    ]
    if items:
        httpx.post(f"{url}/feedback", json=items, timeout=30).raise_for_status()
    return len(items)


def _summary(project: Path, console: Any) -> None:
    processed = sorted((project / "data" / "processed").glob("*/manifest.json"))
    total = {"rows_in": 0, "rows_ok": 0, "rows_quarantined": 0, "rows_duplicate": 0}
    for path in processed:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for key in total:
            total[key] += int(manifest[key])
    console.print(
        f"\n{len(processed)} batches: {total['rows_in']} rows in = {total['rows_ok']} ok + "
        f"{total['rows_quarantined']} quarantined + {total['rows_duplicate']} duplicate"
    )
    console.print(
        f"explore: {project}/data/processed, {project}/data/features, "
        f"{project}/data/quarantine, 'driftloop status -p {project}'"
    )
    console.print(
        f"models: 'driftloop models -p {project}' (MLflow UI: mlflow ui --backend-store-uri "
        f"sqlite:///{project}/mlflow.db)"
    )
    console.print(
        f"serving: 'driftloop serve -p {project}'; what it answered: "
        f"{project}/data/monitoring/predictions/"
    )
    console.print(f"monitoring: 'driftloop monitor -p {project}' (drift and performance)")
    console.print("not yet in this release: the event loop (see the README's roadmap)")
