"""The model lifecycle stage: train on the features so far, register, and run the gate.

Keyed like the other stages: the same features (by their run keys) and the same model and
promotion sections are a cache hit, not a second model version. The champion is re-scored
on the challenger's holdout (the newest labelled rows) before the gate compares them.
"""

from __future__ import annotations

import getpass
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from driftloop import __version__, model_cache
from driftloop.errors import RegistryError, TrainError, first_line
from driftloop.features import user_module_path
from driftloop.layout import Layout, atomic_output, is_complete, read_manifest, seal
from driftloop.spec import Spec
from driftloop.stages import StageReport, keyed_run, read_features, run_key
from driftloop.state import StateDB
from driftloop.train import BATCH, Trained, fit, score

log = logging.getLogger(__name__)

TRAIN_VERSION = "1"
TRAIN_SECTIONS = (
    "model",
    "promotion",
    "task",
    "target",
    "time_column",
    "id_column",
    "contract",
    "features",
)


def feature_batches(layout: Layout, db: StateDB) -> list[dict[str, Any]]:
    """Every batch with complete features (oldest first): ids and manifests, no data read."""
    found = []
    for batch in db.batches():
        out_dir = layout.features / batch.batch_id
        if is_complete(out_dir):
            found.append(
                {
                    "batch_id": batch.batch_id,
                    "seq": batch.seq,
                    "features": layout.relative(out_dir / "manifest.json"),
                    "features_run_key": read_manifest(out_dir)["run_key"],
                    "processed": layout.relative(
                        layout.processed / batch.batch_id / "manifest.json"
                    ),
                }
            )
    return found


def training_frame(layout: Layout, lineage: list[dict[str, Any]]) -> pl.DataFrame:
    """The model columns of the given batches, each row tagged with its batch's sequence."""
    frames = [
        read_features(layout, m["batch_id"]).with_columns(pl.lit(m["seq"]).alias(BATCH))
        for m in lineage
    ]
    return pl.concat(frames, how="diagonal_relaxed").collect()


@dataclass(frozen=True)
class TrainPlan:
    """What a training run would read, and its key (no data read to know it)."""

    key: str
    lineage: list[dict[str, Any]]
    sections: str  # hash of the spec sections training reads

    @property
    def batch_ids(self) -> list[str]:
        return [m["batch_id"] for m in self.lineage]


def train_plan(spec: Spec, layout: Layout, db: StateDB) -> TrainPlan | None:
    """The training run over every batch's features so far; None when there are none."""
    lineage = feature_batches(layout, db)
    if not lineage:
        return None
    sections = spec.section_hash(*TRAIN_SECTIONS)
    key = run_key("train", TRAIN_VERSION, sections, [m["features_run_key"] for m in lineage])
    return TrainPlan(key, lineage, sections)


def train_stage(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    spec_text: str,
    *,
    plan: TrainPlan | None = None,
    backoff: bool = False,
) -> StageReport | None:
    """Train, register and gate a model on all features so far; None when there is no data.

    The key comes from the batches' manifests alone, so a cache hit reads no data.
    """
    plan = plan or train_plan(spec, layout, db)
    if plan is None:
        return None
    latest = db.batches()[-1]
    key, lineage = plan.key, plan.lineage
    out_dir = layout.root / "data" / "models" / key[:16]

    def work(started: float) -> dict[str, Any]:
        frame = training_frame(layout, lineage)
        _enough_rows(frame, spec)
        manifest = _train_register_gate(
            spec, layout, db, frame, lineage, key, out_dir, spec_text, started
        )
        return manifest

    return keyed_run(db, layout, "train", latest, key, out_dir, work, backoff=backoff)


def last_training(layout: Layout, db: StateDB) -> dict[str, Any] | None:
    """The manifest of the newest training run that succeeded, or None."""
    row = db.last_succeeded("train")
    if row is None or row["output"] is None:
        return None
    out_dir = layout.root / row["output"]
    return read_manifest(out_dir) if is_complete(out_dir) else None


def _enough_rows(frame: pl.DataFrame, spec: Spec) -> None:
    """Fail before any fitting when the labelled rows cannot fill a training set and a holdout."""
    if spec.target not in frame.columns:
        return  # train.check_trainable names the missing target
    labelled = frame.filter(pl.col(spec.target).is_not_null()).height
    needed = math.ceil(spec.model.min_rows / (1 - spec.model.holdout.fraction)) + 1
    if labelled < needed:
        raise TrainError(
            f"too few rows for a holdout: {labelled} labelled rows, need {needed} "
            f"(model.min_rows {spec.model.min_rows} to train plus a "
            f"{spec.model.holdout.fraction:.0%} holdout); land more data or lower "
            "model.min_rows"
        )


def _train_register_gate(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    frame: pl.DataFrame,
    lineage: list[dict[str, Any]],
    key: str,
    out_dir: Path,
    spec_text: str,
    started: float,
) -> dict[str, Any]:
    from driftloop import registry
    from driftloop.model_package import write_package
    from driftloop.profile import reference_profile

    trained = fit(frame, spec)
    metric = spec.metric
    champion_version = registry.alias_version(spec, layout, registry.CHAMPION)
    champion = None
    if champion_version is not None:  # loaded before registering: a broken one adds nothing
        try:
            from driftloop.model_package import Predictor

            entry = model_cache.fetch(spec, layout, champion_version)
            champion = Predictor(entry / model_cache.PACKAGE)
            _ = champion.pipeline  # loaded now (it loads lazily): a broken one fails here
        except Exception as exc:
            raise RegistryError(
                f"the champion, {spec.name} v{champion_version}, cannot be loaded to compare "
                f"against ({type(exc).__name__}: {first_line(exc)}); promote another "
                "version ('driftloop models promote N') or roll back"
            ) from exc
    predictions = _holdout_predictions(trained, spec)
    profile = reference_profile(
        trained.split.train.select(trained.inputs),
        holdout_predictions=predictions,
        holdout_metric={metric: trained.metrics.get(metric, float("nan"))},
        seed=spec.model.seed,
    )
    user_module = (
        user_module_path(spec.features.function, layout.root) if spec.features.function else None
    )
    run_metrics = {
        **{f"holdout_{k}": v for k, v in trained.metrics.items()},
        **{f"baseline_{k}": v for k, v in trained.baseline.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "driftloop"
        write_package(
            package,
            spec=spec,
            pipeline=trained.pipeline,
            inputs=trained.inputs,
            categorical=trained.categorical,
            classes=trained.classes,
            user_module=user_module,
            profile=profile,
            monitoring=_monitoring_reference(trained, spec, predictions),
        )
        registered = registry.log_and_register(
            spec,
            layout,
            package=package,
            params={
                "estimator": spec.model.estimator,
                "params": spec.model.params,
                "seed": spec.model.seed,
                "metric": metric,
                "split": trained.split.kind,
                "train_rows": trained.split.train.height,
                "holdout_rows": trained.split.holdout.height,
                "window": spec.model.window.model_dump(),
                "inputs": ",".join(trained.inputs),
            },
            metrics=run_metrics,
            tags={
                "driftloop.train_key": key,
                "driftloop.batches": ",".join(m["batch_id"] for m in lineage),
                "driftloop.code_version": __version__,
            },
            lineage={"batches": lineage},
            spec_text=spec_text,
        )
        # Serving on this machine starts from this copy instead of a download.
        entry = model_cache.store(
            layout,
            spec.name,
            registry.tracking_uri(spec, layout),
            registered.version,
            package=package,
            info=registry.package_info(
                spec.name,
                registered.version,
                registered.run_id,
                run_metrics,
                {"batches": lineage},
            ),
        )
    _precompile(entry)
    db.record_event(
        "ModelRegistered",
        {"model": spec.name, "version": registered.version, "run_id": registered.run_id},
    )
    decision = _gate(spec, layout, db, trained, registered.version, champion_version, champion)
    manifest = {
        "stage": "train",
        "stage_version": TRAIN_VERSION,
        "code_version": __version__,
        "run_key": key,
        "model": spec.name,
        "version": registered.version,
        "run_id": registered.run_id,
        "metric": metric,
        "metrics": trained.metrics,
        "baseline": trained.baseline,
        "split": trained.split.kind,
        "train_rows": trained.split.train.height,
        "holdout_rows": trained.split.holdout.height,
        "decision": decision,
        "inputs": lineage,
        "sections_hash": spec.section_hash(*TRAIN_SECTIONS),
        "timings": {"total_s": round(time.perf_counter() - started, 4)},
    }
    with atomic_output(out_dir) as tmp_dir:
        seal(tmp_dir, manifest)
    return manifest


def _precompile(entry: Path) -> None:
    """Compile and verify the new version for serving now, while scikit-learn is loaded; a
    server then starts without importing it. A model that does not compile is still served
    (by scikit-learn), so a failure here is only logged."""
    from driftloop import inference

    try:
        verdict = inference.precompile(entry / model_cache.PACKAGE, entry / model_cache.COMPILED)
    except Exception as exc:
        log.warning("compiling %s for serving failed: %s", entry, exc)
        return
    log.info("serving path for %s: %s", entry.name, verdict.reason)


def _holdout_predictions(trained: Trained, spec: Spec) -> pl.Series:
    from driftloop.train import to_pandas_inputs

    x = to_pandas_inputs(trained.split.holdout, trained.inputs, trained.categorical)
    if trained.classes is not None and len(trained.classes) == 2:
        return pl.Series("prediction", trained.pipeline.predict_proba(x)[:, 1])
    values = trained.pipeline.predict(x)
    return pl.Series("prediction", [str(v) for v in values] if trained.classes else values)


def _monitoring_reference(
    trained: Trained, spec: Spec, predictions: pl.Series
) -> dict[str, pl.DataFrame]:
    """What drift monitoring compares against: sorted training columns (target included),
    the holdout's predictions, and the holdout's labels with the model's outputs."""
    from driftloop.profile import holdout_frame, reference_columns
    from driftloop.train import to_pandas_inputs

    train = trained.split.train.select([*trained.inputs, spec.target])
    x = to_pandas_inputs(trained.split.holdout, trained.inputs, trained.categorical)
    labels = trained.split.holdout.get_column(spec.target)
    importance = _permutation_importance(trained, x, labels, spec)
    columns = pl.concat(
        [
            reference_columns(
                train, roles={spec.target: "target"}, seed=spec.model.seed, importance=importance
            ),
            reference_columns(predictions.to_frame(), roles={"prediction": "prediction"}),
        ]
    )
    outputs = pl.Series("prediction", trained.pipeline.predict(x))
    if trained.classes is None:
        return {"reference_columns": columns, "reference_holdout": holdout_frame(labels, outputs)}
    classes = [str(c) for c in trained.classes]
    holdout = holdout_frame(labels, outputs, trained.pipeline.predict_proba(x), classes)
    return {"reference_columns": columns, "reference_holdout": holdout}


IMPORTANCE_ROWS = 1_000  # holdout rows permuted to rank the inputs (monitoring weights)


def _permutation_importance(
    trained: Trained, x: Any, labels: pl.Series, spec: Spec
) -> dict[str, float] | None:
    """Each input's permutation importance on (up to 1,000 rows of) the holdout: how much the
    model's score (accuracy or R^2) drops when that column is shuffled; None if it fails."""
    from sklearn.inspection import permutation_importance

    y = labels.cast(pl.String if trained.classes else pl.Float64).to_numpy()
    rows = min(IMPORTANCE_ROWS, len(y))
    try:
        found = permutation_importance(
            trained.pipeline,
            x.iloc[:rows],
            y[:rows],
            n_repeats=2,
            random_state=spec.model.seed,
            n_jobs=1,
        )
    except ValueError as exc:  # e.g. a holdout with one class only
        log.info("no permutation importance: %s", first_line(exc))
        return None
    return {
        c: max(0.0, float(v)) for c, v in zip(trained.inputs, found.importances_mean, strict=True)
    }


def _gate(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    trained: Trained,
    version: str,
    champion_version: str | None,
    champion: Any,
) -> dict[str, Any]:
    """Score the champion on the challenger's holdout; promote or reject; record why."""
    from driftloop import registry

    metric = spec.promotion_metric
    challenger = trained.metrics.get(metric)
    baseline = trained.baseline.get(metric)
    if challenger is None or baseline is None:
        raise RegistryError(f"metric {metric!r} could not be computed on the holdout")
    champion_score = None
    if champion is not None:
        records = holdout_records(layout, db, trained.split.holdout)
        champion_score = rescore(champion, records, spec).get(metric, math.nan)
    verdict = registry.decide(spec, challenger, baseline, champion_score)
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
        "actor": "driftloop (promotion gate)",
    }
    # Recorded first, applied second: a crash in between is repaired by the next pass
    # (apply_pending_decisions), so the registry's alias always follows the event log.
    decision_id = db.record_decision(decision, applied=not verdict.promote)
    if verdict.promote:
        _move_alias(spec, layout, db, decision_id, version)
    registry.tag_version(
        spec,
        layout,
        version,
        {"driftloop.decision": str(decision["decision"]), "driftloop.reason": verdict.reason},
    )
    log.info("model %s v%s %s: %s", spec.name, version, decision["decision"], verdict.reason)
    return decision


def holdout_records(layout: Layout, db: StateDB, holdout: pl.DataFrame) -> pl.DataFrame:
    """The holdout's rows as prep wrote them (the raw contract columns), in holdout order.

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
            pl.scan_parquet(layout.processed / seq_to_id[seq] / "data.parquet").with_columns(
                pl.lit(seq).alias(BATCH)
            )
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


def manual_alias_change(
    spec: Spec, layout: Layout, db: StateDB, *, version: str | None, why: str, actor: str | None
) -> dict[str, Any]:
    """``models promote VERSION`` (version given) or ``models rollback`` (None)."""
    from driftloop import registry

    current = registry.alias_version(spec, layout, registry.CHAMPION)
    kind = "manual"
    if version is None:
        kind = "rollback"
        version = _previous_champion(db, spec.name, current)
        if version is None:
            raise RegistryError(
                f"model {spec.name!r}: there is no earlier champion to roll back to "
                f"(champion is {current or 'unset'}); see 'driftloop models'"
            )
    registry.require_version(spec, layout, version)
    decision = {
        "model": spec.name,
        "version": version,
        "decision": kind,
        "reason": why,
        "metric": spec.promotion_metric,
        "challenger_score": None,
        "champion_version": current,
        "champion_score": None,
        "baseline_score": None,
        "actor": actor or _who(),
    }
    decision_id = db.record_decision(decision, applied=False)  # recorded first, as the gate does
    _move_alias(spec, layout, db, decision_id, version)
    registry.tag_version(
        spec, layout, version, {"driftloop.decision": kind, "driftloop.reason": why}
    )
    return decision


def _move_alias(spec: Spec, layout: Layout, db: StateDB, decision_id: int, version: str) -> None:
    """Apply a recorded decision; one the registry refuses is withdrawn, not left pending
    (the next pass must not apply what the user was told failed)."""
    from driftloop import registry

    try:
        registry.set_alias(spec, layout, registry.CHAMPION, version)
    except Exception as exc:
        db.withdraw(decision_id, f"{type(exc).__name__}: {first_line(exc)}")
        raise
    db.mark_applied(decision_id)


def apply_pending_decisions(spec: Spec, layout: Layout, db: StateDB) -> list[dict[str, Any]]:
    """Point the registry's alias where the newest recorded decision says (after a crash
    between recording a promotion and moving the alias); returns what was applied.

    Only the newest decision that moves the alias counts: an older one still pending was
    overtaken and is marked superseded, never applied over a newer one.
    """
    from driftloop import registry

    pending = db.unapplied(spec.name)
    if not pending:
        return []
    effective = [d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"]
    newest = effective[-1] if effective else None
    applied = []
    for decision in pending:
        if newest is not None and decision["id"] == newest["id"]:
            registry.set_alias(spec, layout, registry.CHAMPION, str(decision["version"]))
            db.mark_applied(int(decision["id"]))
            applied.append(decision)
            log.warning(
                "applied a recorded decision the registry had missed: %s v%s (%s)",
                spec.name,
                decision["version"],
                decision["decision"],
            )
        else:
            db.mark_superseded(int(decision["id"]))
    return applied


def _previous_champion(db: StateDB, model: str, current: str | None) -> str | None:
    """The champion before ``current``: promotions push onto a stack, rollbacks pop it."""
    stack: list[str] = []
    for d in db.decisions(model, effective=True):
        if d["decision"] in ("promoted", "manual"):
            stack.append(d["version"])
        elif d["decision"] == "rollback" and stack:
            stack.pop()
    if stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
