"""``driftloop demo`` (what ``make demo`` runs), end to end through the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.slow


def test_the_demo_runs_the_loop_through_drift_retraining_and_a_hot_swap(tmp_path: Path) -> None:
    project = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "demo", "--project", str(project)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "the loop trained and promoted v1" in out, out
    assert "PROMOTED: first model" in out
    assert "the retrain policy waits (every_batches 3" in out  # the ordinary week 2
    assert "retrain requested: performance degraded on new data" in out  # the drifted week 3
    assert re.search(r"hot swap: /predict answered with v2 [\d.]+s after the promotion", out), out
    traffic = re.search(r"all traffic: (\d+) requests, (\d+) failed, answered by v1, v2", out)
    assert traffic is not None, out
    assert int(traffic.group(1)) > 0 and traffic.group(2) == "0"
    assert "monitored the prediction log against v2" in out
    assert out.rstrip().endswith("done")
    logged = pl.read_parquet(project / "data/monitoring/predictions/*/*.parquet")
    assert logged.height == int(traffic.group(1))  # every answered request, flushed on stop
    assert set(logged["__model_version"].unique()) == {"1", "2"}
    feedback = pl.read_parquet(project / "data/monitoring/feedback/*/*.parquet")
    assert feedback.height > 0 and set(feedback["__label"].unique()) <= {"Yes", "No"}
    assert list((project / "data" / "monitoring" / "reports").glob("*.html"))
