"""``driftloop demo``: the lifecycle on built-in data, start to finish, with a timeline.

It writes the built-in ``shop`` example into a fresh folder, runs the pipeline on the first
batch (prep, features, a first model registered in MLflow and made champion), lands a second
batch whose data has drifted, and runs again: only the new batch is prepared, a challenger
is trained on both, and the gate compares it with the champion on the same newest holdout.
It grows with each stage driftloop gains (serving, monitoring, the event loop).
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

    paths = write_batch(project, EXAMPLE, batch=2, rows=drifted_rows, drift=0.8)
    names = ", ".join(p.name for p in paths)
    step(f"landed a drifted batch: {names}")

    second = run(project)
    step("pass 2: the new batch is prepared (the first is a cache hit); a challenger is gated")
    show(second)

    third = run(project)
    step("pass 3: nothing new, nothing done" if not third.did_work else "pass 3 did work")

    ok = not (first.failed or second.failed or third.failed)
    _summary(project, console)
    step("done" if ok else "finished with failures (see above)")
    return ok


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
        "not yet in this release: serving, drift monitoring and the event loop "
        "(see the README's roadmap)"
    )
