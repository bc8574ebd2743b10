"""One full pass over a project: ``driftloop run`` and ``make run-all``.

A pass ingests what landed and brings every stage's output up to date (prep, features, the
checks of new batches against the champion, training when the retrain policy says so); see
:mod:`driftloop.orchestration.loop`, which ``driftloop watch`` runs on every event.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from driftloop.core.layout import Layout
from driftloop.features import stage as features_stage
from driftloop.orchestration.loop import RunResult, check_model_params_once, run_pass

__all__ = ["RunResult", "read_features", "run"]


def read_features(project: Path, batch_id: str) -> pl.LazyFrame:
    """The model columns of one batch (features are stored as a delta over processed rows)."""
    return features_stage.read_features(Layout(project), batch_id)


def run(project: Path, *, wait: bool = True) -> RunResult:
    """Ingest new files and bring every batch's outputs, and the model, up to date.

    The pass holds the project's writer lease, like ``driftloop watch``: it refuses to run
    beside a watcher (which takes new files itself), and a watcher cannot start meanwhile.
    """
    from driftloop.core.spec import load_spec
    from driftloop.orchestration.lease import Lease

    spec = load_spec(project)  # a broken spec or bad model params fail before any state
    if spec.model.enabled:
        check_model_params_once(spec, Layout(project))
    lease = Lease(Layout(project).state_db)
    lease.acquire()
    try:
        return run_pass(project, wait=wait)
    finally:
        lease.release()
