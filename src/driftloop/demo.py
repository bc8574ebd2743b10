"""``driftloop demo``: the whole lifecycle on built-in data, by the real loop, with a timeline.

It writes the built-in ``shop`` example into a fresh folder (the first week of orders has
landed), starts the loop (``driftloop watch``, here in a thread of this process) and the
server (``driftloop serve``, a child process), and then lets the world happen, faster than
life: the loop trains and promotes a first model, the server starts answering, traffic
starts, a second, ordinary week lands (checked; the retrain policy waits), then a drifted
week lands: the check finds drift and decayed performance, the policy retrains at once,
the gate promotes the challenger and the server swaps to it while the traffic goes on.
Last, the prediction log is monitored and true labels go to /feedback. Nothing is
scripted inside the loop: every step after a file lands is the loop's own doing. The
project stays for the user to explore.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftloop.core.layout import Layout
from driftloop.pipeline import RunResult

# Each wait ends when its event happens; the guard only stops a demo that hangs, so it is
# generous: a machine busy with other work may take minutes to train (seen: over 180 s).
HANG_GUARD_SECONDS = 1200.0
EXAMPLE = "shop"
# The demo's loop settings (appended to the example's spec, which has no such sections):
# a new model every 3 batches, or at once when a new batch shows drift or decay.
LOOP_SETTINGS = """
# -- added by 'driftloop demo' --------------------------------------------------------------
# The loop checks each new batch against the champion. It trains on new data every 3
# batches, or at once when that check finds drift or decayed performance.
retrain: {every_batches: 3, on_drift: true, on_decay: true}
monitoring: {permutations: 199, schedule_minutes: null}   # the demo monitors the log itself
# The demo sends every label of its traffic at once, more than one client's default budget.
serving:
  events_poll_seconds: 0.2
  log: {flush_seconds: 1}
  feedback_limit: {labels_per_second: 10000, burst: 1000000}
"""


def run_demo(
    project: Path,
    *,
    fresh: bool,
    show: Callable[[RunResult], None],
    console: Any,
    rows: int = 5_000,
) -> bool:
    """Run the demo; return True when every step happened as it should."""
    from driftloop.examples import write_batch
    from driftloop.init import init_example
    from driftloop.orchestration.watch import Watcher
    from driftloop.serving.client import background_server, wait_until_ready

    started = time.perf_counter()

    def step(text: str) -> None:
        console.print(f"[bold][{time.perf_counter() - started:6.2f}s][/bold] {text}")

    if fresh and project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True, exist_ok=True)
    init_example(project, EXAMPLE, force=True)
    with Layout(project).spec.open("a", encoding="utf-8") as fh:
        fh.write(LOOP_SETTINGS)
    step(f"wrote the '{EXAMPLE}' example in {project}/: week 1 of orders and customers landed")

    watcher = Watcher(project, interval=0.2, on_pass=show)
    loop = threading.Thread(target=watcher.run, name="driftloop-demo-loop", daemon=True)
    loop.start()
    step("started the loop (driftloop watch) and the server (driftloop serve)")
    log = Layout(project).serving_logs / "demo-server.log"
    ok = True
    try:
        with background_server(project, log=log, wait_ready=False) as server:
            wait_until_ready(server, HANG_GUARD_SECONDS, time.perf_counter())
            step(f"the loop trained and promoted v1; {server.url} answers with it")
            traffic = _start_traffic(project, server.url)
            time.sleep(1.5)
            _report_traffic(traffic.answers, step, "traffic")

            mark = _trainings(project)
            write_batch(project, EXAMPLE, batch=2, rows=rows, drift=0.0)
            step("week 2 landed (an ordinary week)")
            _wait(lambda: _checked(project) >= 1, HANG_GUARD_SECONDS, "the check of week 2")
            ok = ok and _trainings(project) == mark
            step("week 2 checked against v1; no training yet (retrain.every_batches is 3)")

            write_batch(project, EXAMPLE, batch=3, rows=rows, drift=0.8)
            step("week 3 landed, and it has drifted")
            promoted = _wait(
                lambda: _promoted_after(project, "1"), HANG_GUARD_SECONDS, "a new champion"
            )
            swapped = _first_answer_by(traffic.answers, promoted[0], promoted[1])
            if swapped is not None:
                step(
                    f"hot swap: /predict answered with v{promoted[0]} {swapped:.2f}s after the "
                    "promotion, no restart"
                )
            time.sleep(1.0)
            traffic.stop()
            _report_traffic(traffic.answers, step, "all traffic")
            sent = _send_feedback(project, server.url, traffic.answers)
            step(f"sent {sent} true labels to /feedback (ground truth for monitoring)")
            time.sleep(1.5)  # the server writes its log every second in the demo
            _monitor_log(project, step)
    finally:
        watcher.request_stop()
        loop.join(60)
    step(f"stopped the loop and the server (the server flushed its prediction log); {log}")
    ok = ok and _all_succeeded(project)
    _summary(project, console)
    step("done" if ok else "finished, but a step went wrong (see above)")
    return ok


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"the demo waited {timeout:.0f}s for {what}")


def _state(project: Path) -> Any:
    from driftloop.core.layout import Layout
    from driftloop.core.state import StateDB

    return StateDB(Layout(project).state_db)


def _all_succeeded(project: Path) -> bool:
    """Every stage run ended well (a transient failure the loop retried counts once it did)."""
    with _state(project) as db:
        return all(r["status"] == "succeeded" for r in db.stage_runs(1000))


def _trainings(project: Path) -> int:
    with _state(project) as db:
        return sum(1 for r in db.stage_runs(1000) if r["stage"] == "train")


def _checked(project: Path) -> int:
    with _state(project) as db:
        return sum(
            1 for r in db.stage_runs(1000) if r["stage"] == "monitor" and r["status"] == "succeeded"
        )


def _promoted_after(project: Path, version: str) -> tuple[str, float] | None:
    """(version, epoch seconds) of a promotion to another version than ``version``."""
    from datetime import datetime

    with _state(project) as db:
        event = db.last_event("ModelPromoted")
    if event is None or str(event["version"]) == version:
        return None
    return str(event["version"]), datetime.fromisoformat(event["ts"]).timestamp()


def _first_answer_by(answers: list[Any], version: str, since: float) -> float | None:
    deadline = time.time() + 20
    while time.time() < deadline:
        first = [a.sent + a.seconds for a in list(answers) if a.version == version]
        if first:
            return float(max(0.0, min(first) - since))
        time.sleep(0.05)
    return None


def _start_traffic(project: Path, url: str) -> Any:
    """Requests at concurrency 4, cycling through week 1's processed rows."""
    import polars as pl

    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.serving.client import Traffic
    from driftloop.serving.records import request_records

    spec, layout = load_spec(project), Layout(project)
    first = sorted(p for p in Path(layout.processed).iterdir() if not p.name.startswith("."))[0]
    rows = pl.read_parquet(first / "data.parquet").head(500)
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
    for a in [a for a in done if a.status != 200][:3]:
        step(f"  a failed request: status {a.status}: {a.detail}")
    step(
        f"{what}: {len(done)} requests, {failed} failed, answered by "
        f"{', '.join('v' + v for v in versions)}; latency p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (4 clients, sharing 2 cores with the loop)"
    )


def _send_feedback(project: Path, url: str, answers: list[Any]) -> int:
    """The true labels of answered requests (known here: they are week 1's rows)."""
    import httpx
    import polars as pl

    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec

    spec, layout = load_spec(project), Layout(project)
    first = sorted(p for p in Path(layout.processed).iterdir() if not p.name.startswith("."))[0]
    truth = pl.read_parquet(first / "data.parquet").head(500)[spec.target].to_list()
    items = [
        {"request_id": a.request_id, "record": 0, "label": truth[a.record]}
        for a in answers
        if a.status == 200 and a.request_id and truth[a.record] is not None
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(items), 1000):
            client.post("/feedback", json=items[start : start + 1000]).raise_for_status()
    return len(items)


def _monitor_log(project: Path, step: Callable[[str], None]) -> None:
    from driftloop.core.errors import DriftloopError
    from driftloop.monitoring.run import monitor

    try:
        result = monitor(project, days=1)
    except DriftloopError as exc:
        step(f"monitoring the prediction log: {exc}")
        return
    paths = result.report.get("paths") or {}
    step(
        f"monitored the prediction log against v{result.report['model']['version']}: "
        f"{'; '.join(result.report['summary']['messages'])} (report: {paths.get('html')})"
    )


def _summary(project: Path, console: Any) -> None:
    processed = sorted(Path(Layout(project).processed).glob("*/manifest.json"))
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
        f"explore: 'driftloop status -p {project}', 'driftloop models -p {project}', "
        f"{Layout(project).reports}/, 'driftloop up -p {project}' to run it all again"
    )
