"""The promotion gate: the champion re-scored on the challenger's holdout, the decision, and
its record (the promote stage, ``promotion/stage.py``, runs it on a training's output).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from driftloop.core.errors import RegistryError, TrainError, first_line
from driftloop.core.layout import Layout, scan_output
from driftloop.core.manifests import Decision as DecisionRecord
from driftloop.core.spec import Spec
from driftloop.core.state import StateDB
from driftloop.models import cache as model_cache
from driftloop.models.inputs import BATCH
from driftloop.models.metrics import improvement, score
from driftloop.models.registry import CHAMPION, Registry
from driftloop.promotion.alias import move_alias

log = logging.getLogger(__name__)

ACTOR = "driftloop (promotion gate)"
DECISION_FIELDS = (
    "model",
    "version",
    "decision",
    "reason",
    "metric",
    "challenger_score",
    "champion_version",
    "champion_score",
    "baseline_score",
    "actor",
)


def gate(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    registry: Registry,
    training: dict[str, Any],
    holdout: pl.DataFrame,
) -> dict[str, Any]:
    """Score the champion on the challenger's holdout; promote or reject; record why.

    ``training``: the train stage's manifest (the version, the challenger's and the
    baseline's metrics on the holdout); ``holdout``: the holdout's lineage keys.
    """
    version = str(training["version"])
    metric = spec.promotion_metric
    # a metric the holdout could not define (one class: no roc_auc) is NaN: decide() rejects
    # it with the challenger's problem as the reason, rather than failing the stage
    challenger = _defined(training["metrics"].get(metric))
    baseline = _defined(training["baseline"].get(metric))
    champion_version = registry.alias(CHAMPION)
    champion_score = None
    if champion_version == version:  # moved by hand before the gate came to it
        verdict = Decision(True, f"v{version} is already the champion (moved before the gate ran)")
    else:
        if champion_version is not None:
            champion = load_champion(spec, layout, registry, champion_version)
            records = holdout_records(layout, db, holdout)
            champion_score = rescore(champion, records, spec).get(metric, math.nan)
        verdict = decide(spec, challenger, baseline, champion_score)
    decision: dict[str, Any] = {
        "model": spec.name,
        "version": version,
        "decision": "promoted" if verdict.promote else "rejected",
        "reason": verdict.reason,
        "metric": metric,
        "challenger_score": challenger,
        "champion_version": champion_version,
        "champion_score": champion_score,
        "baseline_score": baseline,
        "actor": ACTOR,
    }
    DecisionRecord.model_validate(decision)  # its shape, checked before it is recorded
    # Recorded first, applied second: a crash in between is repaired by the next pass
    # (apply_pending_decisions), so the registry's alias always follows the event log.
    decision_id = db.record_decision(decision, applied=not verdict.promote)
    if verdict.promote:
        move_alias(spec, layout, db, decision_id, version, registry=registry)
    tag_decision(registry, decision)
    log.info("model %s v%s %s: %s", spec.name, version, decision["decision"], verdict.reason)
    return decision


def _defined(value: Any) -> float:
    return math.nan if value is None else float(value)


def tag_decision(registry: Registry, decision: dict[str, Any]) -> None:
    registry.tag(
        str(decision["version"]),
        {"driftloop.decision": str(decision["decision"]), "driftloop.reason": decision["reason"]},
    )


def load_champion(spec: Spec, layout: Layout, registry: Registry, version: str) -> Any:
    """The champion's predictor, loaded now (it loads lazily): a broken one fails here.

    Its evaluation model: when the champion served a pipeline fitted again on its whole
    window (``model.refit_on_all``), that one may have learnt from rows of the new holdout
    (the holdout is the newest slice of a window that grew); with a time or arrival split,
    the one fitted without its own holdout has not, and the challenger's figure comes from
    a model fitted without this holdout: both sides are models that never saw these rows.
    """
    from driftloop.models.package import Predictor

    try:
        folder = model_cache.fetch(registry, layout, version) / model_cache.PACKAGE
        champion = Predictor(folder, evaluation=True)
        _ = champion.pipeline
    except Exception as exc:
        raise RegistryError(
            f"the champion, {spec.name} v{version}, cannot be loaded to compare against "
            f"({type(exc).__name__}: {first_line(exc)}); promote another version "
            "('driftloop models promote N') or roll back"
        ) from exc
    return champion


def holdout_records(layout: Layout, db: StateDB, holdout: pl.DataFrame) -> pl.DataFrame:
    """The holdout's rows as prep wrote them (the raw contract columns), in holdout order;
    ``holdout`` holds (at least) their lineage keys.

    The features frame is not what a registered model takes: its columns went through the
    feature function (and the current spec's exclusions), so scoring the champion on them
    would score it on other inputs than the challenger. Rows are matched by lineage.
    """
    keys = [BATCH, "__file", "__row"]
    missing = [k for k in keys if k not in holdout.columns]
    if missing:
        raise TrainError(
            f"the features lack the lineage column(s) {missing} needed to find the holdout's "
            "processed rows; a features.function that returns a frame must keep __file and __row"
        )
    seq_to_id = {b.seq: b.batch_id for b in db.batches()}
    wanted = holdout.select(keys).with_row_index("__order")
    processed = pl.concat(
        [
            scan_output(layout.processed / seq_to_id[seq]).with_columns(pl.lit(seq).alias(BATCH))
            for seq in wanted.get_column(BATCH).unique().to_list()
        ],
        how="diagonal_relaxed",
    )
    joined = wanted.lazy().join(processed, on=keys, how="inner").sort("__order").collect()
    if joined.height != holdout.height:
        raise TrainError(
            f"only {joined.height} of the holdout's {holdout.height} rows were found in "
            "data/processed; run 'driftloop run' again to rebuild the outputs"
        )
    return joined.drop("__order")


def rescore(predictor: Any, records: pl.DataFrame, spec: Spec) -> dict[str, float]:
    """A registered model's metrics on processed rows, from their raw contract columns."""
    raw_columns = [c for c in spec.contract.columns if c in records.columns and c != spec.target]
    out = predictor.predict(records.select(raw_columns))
    y_true = records.get_column(spec.target)
    if spec.task == "classification":
        classes = predictor.classes
        proba = out.select([f"proba_{c}" for c in classes]).to_numpy() if classes else None
        truth = y_true.cast(pl.String).to_numpy().astype(object)
        return score(spec, truth, out.get_column("prediction").to_numpy(), proba, classes)
    return score(spec, y_true.cast(pl.Float64).to_numpy(), out.get_column("prediction").to_numpy())


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(spec: Spec, challenger: float, baseline: float, champion: float | None) -> Decision:
    """The promotion gate, as the spec's promotion section says.

    ``champion`` is None when there is no champion yet (callers pass ``math.nan`` when a
    champion exists but cannot be scored on this holdout).
    """
    metric = spec.promotion_metric
    if math.isnan(challenger):
        return Decision(
            False,
            f"the challenger's {metric} is undefined (NaN) on its holdout (for example a "
            "holdout with a single class, or too few rows), so it cannot be compared; not "
            "promoting: check the holdout's labels and size, or use 'driftloop models promote "
            "N --force' to serve it anyway",
        )
    if math.isnan(baseline) and spec.promotion.must_beat_baseline:
        return Decision(
            False,
            f"the naive baseline's {metric} is undefined (NaN) on this holdout, so the "
            f"challenger ({metric} {challenger:.4f}) cannot be shown to beat it; not promoting "
            "automatically: use 'driftloop models promote N' after comparing them",
        )
    if champion is not None and math.isnan(champion):
        return Decision(
            False,
            f"the champion could not be scored with {spec.promotion_metric} on this holdout; "
            "not promoting automatically: compare them and use 'driftloop models promote'",
        )
    policy = spec.promotion
    over_baseline, _ = improvement(metric, challenger, baseline)
    if policy.must_beat_baseline and over_baseline <= 0:
        return Decision(
            False,
            f"{metric} {challenger:.4f} does not beat the naive baseline's {baseline:.4f}",
        )
    versus = "beats" if over_baseline > 0 else "does not beat (not required)"
    if champion is None:
        return Decision(
            True, f"first model: {metric} {challenger:.4f} {versus} the baseline's {baseline:.4f}"
        )
    absolute, relative = improvement(metric, challenger, champion)
    needed = (
        f"(needs +{policy.min_improvement:g} absolute and "
        f"+{policy.min_relative_improvement:.1%} relative)"
    )
    if (
        absolute <= 0
        or absolute < policy.min_improvement
        or relative < policy.min_relative_improvement
    ):
        return Decision(
            False,
            f"{metric} {challenger:.4f} vs champion {champion:.4f} on the same holdout: "
            f"{absolute:+.4f} {needed}",
        )
    return Decision(
        True,
        f"{metric} {challenger:.4f} beats champion {champion:.4f} on the same holdout by "
        f"{absolute:+.4f} ({relative:+.1%})",
    )
