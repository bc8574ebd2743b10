"""Monitoring what a real ``driftloop serve`` process logged: /predict and /feedback over
HTTP, then ``driftloop monitor`` on the prediction log window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from driftloop.core.layout import Layout
from driftloop.core.state import StateDB

from .serving_helpers import SERVING, serving, synthetic_project
from .test_lifecycle import land

pytestmark = pytest.mark.slow


def test_drifted_traffic_and_a_changed_concept_are_seen_in_the_log(tmp_path: Path) -> None:
    # new data alone never trains here: only a drift or decay does
    project = synthetic_project(
        tmp_path / "synth", versions=1, extra=SERVING + "retrain: {every_batches: 0}\n"
    )
    rng = np.random.default_rng(7)
    sent = 0
    with serving(project) as server, server.client() as client:
        for _ in range(12):
            x1 = rng.normal(2.0, 1.0, 50)  # the inputs moved by two standard deviations
            x2 = rng.normal(size=50)
            c = rng.choice(["a", "b", "c"], 50)
            records = [
                {"t": "2024-02-01 10:00:00", "x1": float(a), "x2": float(b), "c": str(k)}
                for a, b, k in zip(x1, x2, c, strict=True)
            ]
            answer = client.post("/predict", json=records)
            assert answer.status_code == 200, answer.text
            rid = answer.json()["request_id"]
            # the concept turned around: y now falls with x1
            truth = np.where(rng.random(50) < 1 / (1 + np.exp(1.5 * x1 + x2)), "yes", "no")
            labels = [
                {"request_id": rid, "record": i, "label": str(y)} for i, y in enumerate(truth)
            ]
            assert client.post("/feedback", json=labels).status_code == 202
            sent += 50
    # the server flushed its logs on shutdown
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "driftloop"), "monitor", "-p", str(project), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr
    report = json.loads(out.stdout)
    current = report["current"]
    assert current["kind"] == "prediction_log" and current["rows"] == sent
    assert current["labelled_rows_of_champion"] == sent
    assert "x1" in report["data_drift"]["drifted_columns"]
    assert report["prediction_drift"]["drift"]
    assert report["performance"]["degraded"]
    with StateDB(Layout(project).state_db) as db:
        kinds = {e["type"] for e in db.events(limit=50)}
    assert {"DriftDetected", "PerformanceDegraded"} <= kinds

    # The retrain policy acts on what the prediction-log monitor found (the planner's one
    # rule, for the built-in loop and the Prefect flow alike): with no batch since the last
    # training there is nothing new to learn from, and the pass says so ...
    from driftloop.pipeline import run

    quiet = run(project)
    assert not quiet.retrain and "nothing new to learn from" in str(quiet.waiting)
    # ... and the next batch, ordinary as it is, is trained on at once (every_batches is 0)
    land(project, "part-9.csv", 800, seed=9, start_day=6)
    after = run(project)
    assert not after.failed, [(r.stage, r.error) for r in after.failed]
    assert str(after.retrain).startswith("performance degraded in the prediction log")
    ran = [r.stage for r in after.reports if r.outcome == "ran"]
    assert ran.index("train") < ran.index("promote") < ran.index("monitor")  # trained first
    with StateDB(Layout(project).state_db) as db:
        (request,) = [e for e in db.events(limit=200) if e["type"] == "RetrainRequested"][-1:]
        assert request["reason"] == after.retrain
        assert db.last_event("ModelRegistered")["version"] == "2"
