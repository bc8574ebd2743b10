"""Crash safety: ``kill -9`` the watcher at random moments of a multi-batch run, restart it,
and check that nothing was lost, nothing was done twice, and the registry agrees with the
event log.

Each trial lands one more file, starts ``driftloop watch`` and kills it (SIGKILL) after a
random delay, which lands in any stage: start-up, ingest, prep, features, the check against
the champion, training, registering, the gate. A last clean ``watch --until-idle`` finishes
what the kills interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.models.mlflow_registry import MlflowRegistry
from driftloop.models.registry import CHAMPION, open_registry

from .crash_trials import QUICK, crash_problems, finish, kill_watch_at_random, stage_kills
from .helpers import write_spec
from .test_lifecycle import SPEC

pytestmark = pytest.mark.slow

TRIALS = 20
ROWS = 400


def test_kill_9_at_random_moments_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    in_stage = kill_watch_at_random(tmp_path, TRIALS, ROWS, seed=20261128)
    done = finish(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert crash_problems(tmp_path, TRIALS, ROWS) == []
    assert in_stage == TRIALS // 2
    assert stage_kills(tmp_path) > 0  # some kills landed inside a stage


@pytest.mark.parametrize("delay", [0.4, 0.8, 1.2, 1.6])
def test_a_kill_while_the_registry_is_first_created_leaves_no_broken_store(
    tmp_path: Path, delay: float
) -> None:
    """MLflow builds a new SQLite store with one migration after another; a process killed in
    the middle must not leave a store that every later open fails on."""
    code = (
        "from pathlib import Path\n"
        "from driftloop.models.mlflow_registry import ensure_sqlite_store\n"
        f"root = Path({str(tmp_path)!r})\n"
        "ensure_sqlite_store(root / 'mlflow.db', root / 'mlartifacts')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() in (0, -signal.SIGKILL)  # done, or killed: not failed at import
    write_spec(tmp_path, SPEC + QUICK)
    spec, layout = load_spec(tmp_path), Layout(tmp_path)
    # Whatever the moment, the store either is not there or is whole: it opens and works.
    registry = open_registry(spec, layout)
    assert registry.alias(CHAMPION) is None
    assert registry.versions() == []
    assert isinstance(registry, MlflowRegistry)
    assert registry.client(write=True).search_registered_models() == []  # it opens to write
