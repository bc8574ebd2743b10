"""A model as the server holds it: the predictor, its request contract, and what it says of itself.

``ServedModel.score`` is the whole request-to-prediction path for a micro-batch of records:
prep's contract rules, the feature function, and the fitted pipeline, in that order. It is
a pure computation (no I/O), run on the server's prediction thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftloop.core.predlog import (
    FLAGS,
    MODEL_NAME,
    MODEL_VERSION,
    PREDICTION,
    PROBA,
    RECORD,
    REQUEST_ID,
    TS,
)
from driftloop.prep.rules import POLARS_TYPES
from driftloop.serving.records import Checked, Problem, RequestContract, UnknownCategory
from driftloop.serving.rowpath import ROW_LIMIT, Declined, RowPath, row_path

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """A micro-batch's outcome, record by record (positions as in the batch)."""

    checked: Checked
    accepted: list[int]  # positions of the records that were scored
    labels: Any  # numpy array, one per accepted record
    proba: Any  # numpy array (accepted x classes) or None for a regressor

    def problems(self, position: int) -> list[Problem]:
        return self.checked.problems.get(position, [])


@dataclass
class ServedModel:
    """A loaded, warmed-up registered model version."""

    name: str
    version: str
    predictor: Any  # driftloop.models.package.Predictor
    contract: RequestContract
    info: dict[str, Any] = field(default_factory=dict)

    engine: Any = None  # what scores model columns: a CompiledPipeline, or the predictor
    rows: RowPath | None = None  # the row-wise path for small clean batches, if it has one
    typed_schema: dict[str, pl.DataType] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        name: str,
        version: str,
        folder: Path,
        *,
        unknown_category: UnknownCategory,
        info: dict[str, Any] | None = None,
        threads: int = 1,
        compiled: Path | None = None,
    ) -> ServedModel:
        """Load a package folder and warm it up. ``compiled`` is where a verified compiled
        path is kept (the model cache): loaded from there when present, else compiled,
        verified against scikit-learn and kept there."""
        from driftloop.models import inference
        from driftloop.models.package import Predictor

        started = time.perf_counter()
        predictor = Predictor(folder)
        contract = RequestContract.from_spec(predictor.spec, unknown_category)
        model = cls(name, version, predictor, contract, dict(info or {}), engine=predictor)
        verdict = inference.load(compiled, threads) if compiled is not None else None
        if verdict is None:  # not compiled here before: compile, verify, keep for next time
            warm = contract.check([example_record(contract)] * 2, predictor.user_function).features
            assert warm is not None  # the Polars path always builds the frame
            verdict = inference.compile_package(predictor, folder, extra=[warm], threads=threads)
            if compiled is not None:
                try:
                    inference.save(compiled, verdict)
                except OSError as exc:  # a read-only cache still serves
                    log.warning("could not keep the compiled path in %s: %s", compiled, exc)
        if verdict.compiled is not None:
            model.engine = verdict.compiled
        model.info["inference"] = {
            "engine": "treelite" if verdict.compiled is not None else "scikit-learn",
            "reason": verdict.reason,
            "verified_rows": verdict.rows,
            "max_difference": verdict.max_difference,
        }
        model.rows, why = row_path(contract, verdict.compiled, predictor.user_function)
        model.info["inference"]["row_path"] = why
        model.typed_schema = {n: POLARS_TYPES[c.dtype] for n, c in contract.columns.items()}
        model.warm_up()
        model.info["load_seconds"] = round(time.perf_counter() - started, 3)
        model.info["loaded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return model

    @property
    def classes(self) -> list[str] | None:
        classes: list[str] | None = self.predictor.classes
        return classes

    def score(self, records: list[dict[str, str | None]]) -> Scored:
        scored = self.score_rows(records)
        return scored if scored is not None else self.score_frames(records)

    def score_rows(self, records: list[dict[str, str | None]]) -> Scored | None:
        """The row path (rowpath.py), or None when it has none for this model or batch."""
        if self.rows is None or len(records) > ROW_LIMIT:
            return None
        try:
            typed, labels, proba = self.rows.score(records)
        except Declined:  # a record the row path is not sure about: Polars decides
            return None
        checked = Checked(None, None, {}, {}, typed, self.typed_schema)
        return Scored(checked, list(range(len(records))), labels, proba)

    def score_frames(self, records: list[dict[str, str | None]]) -> Scored:
        """The Polars path, for any batch (see :meth:`score`)."""
        checked = self.contract.check(records, self.predictor.user_function)
        assert checked.features is not None
        accepted = [i for i in range(len(records)) if i not in checked.problems]
        if len(accepted) == len(records):
            rows = checked.features
        else:
            rows = checked.features[accepted] if accepted else checked.features.clear()
        if rows.height:
            labels, proba = self.engine.predict_features(rows)
        else:
            labels, proba = np.empty(0, dtype=object), None
        return Scored(checked, accepted, labels, proba)

    def warm_up(self) -> None:
        """Run every code path once (query plans, the pipeline) before the first request."""
        record = example_record(self.contract)
        self.score([record, record])
        self.score_frames([record, record])

    def log_frame(
        self, scored: Scored, request_ids: list[str], record_index: list[int], ts: list[datetime]
    ) -> pl.DataFrame:
        """The prediction log rows of a scored batch (accepted records only).

        ``request_ids``, ``record_index`` and ``ts`` hold one value per record of the batch.
        """
        pick = scored.accepted
        typed = scored.checked.typed
        if len(pick) != typed.height:
            typed = typed[pick] if pick else typed.clear()
        columns = [
            pl.Series(TS, [ts[i] for i in pick], pl.Datetime("us", "UTC")),
            pl.Series(REQUEST_ID, [request_ids[i] for i in pick], pl.String),
            pl.Series(RECORD, [record_index[i] for i in pick], pl.Int32),
            pl.Series(MODEL_NAME, [self.name] * len(pick), pl.String),
            pl.Series(MODEL_VERSION, [self.version] * len(pick), pl.String),
        ]
        if self.classes is not None:
            columns.append(pl.Series(PREDICTION, list(scored.labels), pl.String))
            columns += [
                pl.Series(f"{PROBA}{c}", scored.proba[:, k], pl.Float64)
                for k, c in enumerate(self.classes)
            ]
        else:
            columns.append(pl.Series(PREDICTION, scored.labels, pl.Float64))
        flags = scored.checked.flags
        columns.append(
            pl.Series(FLAGS, ["; ".join(flags[i]) if i in flags else None for i in pick], pl.String)
        )
        return typed.hstack(columns)


def example_record(contract: RequestContract) -> dict[str, str | None]:
    """A record of plausible raw text for every column (only to warm the code paths up)."""
    sample_day = date(2024, 1, 31)
    out: dict[str, str | None] = {}
    for name, rule in contract.columns.items():
        if rule.allowed:
            out[name] = str(rule.allowed[0])
        elif rule.dtype in ("int", "float"):
            low = rule.min if rule.min is not None else 0
            out[name] = str(int(low) if rule.dtype == "int" else float(low))
        elif rule.dtype == "bool":
            out[name] = "true"
        elif rule.dtype == "date":
            out[name] = sample_day.strftime(rule.format or "%Y-%m-%d")
        elif rule.dtype == "datetime":
            moment = datetime(2024, 1, 31, 12, 30, 0)
            out[name] = moment.strftime(rule.format or "%Y-%m-%d %H:%M:%S")
        else:
            out[name] = None if rule.regex else "a"
    return out
