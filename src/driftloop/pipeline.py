"""One full pass over a project: ingest what landed, then prep and features for every batch
whose outputs are missing or out of date. ``driftloop run`` and ``make run-all`` call this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from driftloop import stages
from driftloop.ingest import IngestResult, ingest
from driftloop.layout import Layout, sweep_temporaries
from driftloop.spec import load_spec
from driftloop.stages import StageReport, features_stage, prep_stage
from driftloop.state import StateDB

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    ingest: IngestResult
    reports: list[StageReport] = field(default_factory=list)

    @property
    def failed(self) -> list[StageReport]:
        return [r for r in self.reports if r.outcome == "failed"]

    @property
    def did_work(self) -> bool:
        """Anything ingested, run or failed in this pass (cache hits do not count)."""
        active = ("ran", "failed", "failed-earlier")
        return any(r.outcome in active for r in self.reports) or self.ingest.batch is not None


def read_features(project: Path, batch_id: str) -> pl.LazyFrame:
    """The model columns of one batch (features are stored as a delta over processed rows)."""
    return stages.read_features(Layout(project), batch_id)


def run(project: Path, *, wait: bool = True) -> RunResult:
    """Ingest new files and bring every batch's prep and features outputs up to date."""
    layout = Layout(project)
    spec = load_spec(project)
    if spec.model.enabled:
        from driftloop.train import check_model_params

        check_model_params(spec)
    for folder in (layout.processed, layout.features, layout.quarantine):
        sweep_temporaries(folder)
    with StateDB(layout.state_db) as db:
        result = RunResult(ingest(spec, layout, db, wait=wait))
        for batch in db.batches():
            prep = prep_stage(spec, layout, db, batch)
            result.reports.append(prep)
            if prep.outcome in ("ran", "cached"):
                result.reports.append(features_stage(spec, layout, db, batch))
        if spec.model.enabled:
            from driftloop.lifecycle import train_stage

            trained = train_stage(spec, layout, db, layout.spec.read_text(encoding="utf-8"))
            if trained is not None:
                result.reports.append(trained)
    return result
