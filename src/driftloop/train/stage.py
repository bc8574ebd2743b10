"""The train stage: train on the features so far, register the version, keep it on this
machine (cached and compiled for serving), and write what the promotion gate needs.

Its output (``data/models/<key>/``) is the manifest (version, run, the challenger's and the
baseline's metrics, the batches it read) and ``holdout.parquet``: the holdout's lineage keys
(``__batch_seq``, ``__file``, ``__row``), by which the gate finds the same rows in the
processed data to re-score the champion on. Deciding is the promote stage's work
(``driftloop.promotion.stage``); this stage never touches an alias but ``challenger``.

Keyed like the other stages: the same features (by their run keys) and the same model and
promotion sections are a cache hit, not a second model version. (The promotion section is
in the key so that a changed policy gets a challenger of its own to decide on.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftloop import __version__
from driftloop.core import executor as fan_out
from driftloop.core.errors import TrainError, first_line
from driftloop.core.layout import (
    Layout,
    atomic_output,
    committed_outputs,
    is_complete,
    read_manifest,
    seal,
)
from driftloop.core.manifests import TrainManifest
from driftloop.core.outputs import MANIFEST, SUCCESS
from driftloop.core.spec import Spec
from driftloop.core.stage import Context, Skip, StageCall, StageDef, Work, run_key
from driftloop.core.state import Batch, StateDB
from driftloop.features.compute import user_module_path
from driftloop.features.stage import read_features
from driftloop.models import cache as model_cache
from driftloop.models.inputs import BATCH
from driftloop.models.registry import Registry, open_registry, package_info
from driftloop.train.fit import Trained, fit

log = logging.getLogger(__name__)


# 2: the gate is the promote stage's; the holdout's keys are an output
# 3: the served model is fitted again on every row of the window (model.refit_on_all)
TRAIN_VERSION = "3"

HOLDOUT = "holdout.parquet"  # the holdout's lineage keys, in the training output
HOLDOUT_KEYS = (BATCH, "__file", "__row")


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


def feature_batches(
    layout: Layout,
    db: StateDB,
    current: Mapping[tuple[str, str], str] | None = None,
    committed: Container[str] = (),
    batches: Iterable[Batch] | None = None,
) -> list[dict[str, Any]]:
    """Every batch with complete features (oldest first): ids and manifests, no data read.
    ``current`` (the state database's published keys) spares reading each manifest,
    ``committed`` (batches whose features the caller saw committed just now) a check each,
    and ``batches`` (the caller's read of the state database's batches) a read."""
    found = []
    features, processed = layout.relative(layout.features), layout.relative(layout.processed)
    published = current if current is not None else {}
    root = str(layout.features)  # (os.path, not pathlib: 10,000s of batches)
    remote = layout.on_object_store
    # there, one paginated listing of the features' markers (not a GET of each marker)
    listed = committed_outputs(layout.features) if remote else set()
    for batch in db.batches() if batches is None else batches:
        b = batch.batch_id
        if b not in committed and not (
            b in listed if remote else os.path.exists(f"{root}/{b}/{SUCCESS}")  # noqa: PTH110
        ):
            continue
        key = (
            published.get(("features", b))
            or read_manifest(layout.features / b if remote else Path(root, b))["run_key"]
        )
        found.append(
            {
                "batch_id": b,
                "seq": batch.seq,
                "features": f"{features}/{b}/{MANIFEST}",
                "features_run_key": key,
                "processed": f"{processed}/{b}/{MANIFEST}",
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


def train_plan(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    *,
    current: Mapping[tuple[str, str], str] | None = None,
    committed: Container[str] = (),
    batches: Iterable[Batch] | None = None,
) -> TrainPlan | None:
    """The training run over every batch's features so far; None when there are none
    (``current``, ``committed``, ``batches``: see :func:`feature_batches`)."""
    lineage = feature_batches(layout, db, current, committed, batches)
    if not lineage:
        return None
    sections = spec.section_hash(*TRAIN_SECTIONS)
    key = run_key("train", TRAIN_VERSION, sections, [m["features_run_key"] for m in lineage])
    return TrainPlan(key, lineage, sections)


def work(ctx: Context, call: StageCall) -> Work | Skip:
    """Train and register a model on all features so far.

    The key comes from the batches' manifests alone, so a cache hit reads no data.
    ``registry``: the project's own (from the spec) unless given.
    """
    spec, layout, db = ctx.spec, ctx.layout, ctx.db
    plan = train_plan(spec, layout, db)
    if plan is None:
        return Skip("no batch has features yet")
    key, lineage = plan.key, plan.lineage
    out_dir = layout.models / key[:16]
    spec_text = layout.spec.read_text(encoding="utf-8")

    def run(started: float) -> dict[str, Any]:
        parts: dict[str, float] = {}
        with _timed(parts, "read"):
            frame = training_frame(layout, lineage)
            _enough_rows(frame, spec)
        return _train_and_register(
            spec,
            layout,
            db,
            open_registry(spec, layout),
            frame,
            lineage,
            key,
            out_dir,
            spec_text,
            started,
            parts,
        )

    # recorded with the newest batch it learned from
    return Work(key, out_dir, run, lineage[-1]["batch_id"])


STAGE = StageDef(
    "train",
    per_batch=False,
    work=work,
    help="train on every batch's features so far, register, cache and compile the version",
)


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


def _train_and_register(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    registry: Registry,
    frame: pl.DataFrame,
    lineage: list[dict[str, Any]],
    key: str,
    out_dir: Path,
    spec_text: str,
    started: float,
    parts: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Fit, profile, package, register, cache and compile; ``parts`` collects each step's
    seconds (the manifest's ``timings``)."""
    from driftloop.models.package import write_package
    from driftloop.models.profile import reference_profile

    parts = {} if parts is None else parts
    with _timed(parts, "fit"):
        trained = fit(frame, spec)
    metric = spec.metric
    holdout = _holdout_keys(trained.split.holdout)
    predictions = _holdout_predictions(trained, spec)
    served_rows = trained.served_rows
    trained_on = _trained_on(trained)
    # The reference is what the served model learned from (its sample also verifies the
    # compiled path); the holdout's predictions and metric are the evaluation model's, the
    # only ones made on rows the model had not seen.
    with _timed(parts, "profile"):
        profile = reference_profile(
            served_rows.select(trained.inputs),
            holdout_predictions=predictions,
            holdout_metric={metric: trained.metrics.get(metric, float("nan"))},
            seed=spec.model.seed,
            executor=fan_out.current(),  # an orchestrator's cluster, or None: one query here
        )
    monitoring = _monitoring_reference(trained, spec, predictions, parts)
    user_module = (
        user_module_path(spec.features.function, layout.root) if spec.features.function else None
    )
    run_metrics = {
        **{f"holdout_{k}": v for k, v in trained.metrics.items()},
        **{f"baseline_{k}": v for k, v in trained.baseline.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "driftloop"
        with _timed(parts, "package"):
            write_package(
                package,
                spec=spec,
                pipeline=trained.pipeline,
                inputs=trained.inputs,
                categorical=trained.categorical,
                classes=trained.classes,
                user_module=user_module,
                profile=profile,
                monitoring=monitoring,
                evaluation=trained.evaluation,
                evaluation_classes=trained.evaluation_classes,
                trained_on=trained_on,
            )
        # The compiled path is built and verified in a thread while MLflow registers the
        # version (it decides nothing about promotion; serving needs it); joined below.
        compiling = _Compile(package, trained.pipeline)
        compiling.start()
        with _timed(parts, "register"):
            registered = registry.register(
                package,
                params={
                    "estimator": spec.model.estimator,
                    "params": spec.model.params,
                    "seed": spec.model.seed,
                    "metric": metric,
                    "split": trained.split.kind,
                    "train_rows": trained.split.train.height,
                    "holdout_rows": trained.split.holdout.height,
                    "refit_on_all": trained.refit,
                    "served_rows": served_rows.height,
                    "window": spec.model.window.model_dump(),
                    "inputs": ",".join(trained.inputs),
                },
                metrics=run_metrics,
                tags={
                    "driftloop.train_key": key,
                    "driftloop.batches": ",".join(m["batch_id"] for m in lineage),
                    "driftloop.code_version": __version__,
                    "driftloop.served_rows": str(served_rows.height),
                    "driftloop.holdout_rows": str(trained.split.holdout.height),
                    "driftloop.refit_on_all": str(trained.refit).lower(),
                },
                lineage={"batches": lineage, "trained_on": trained_on},
                spec_text=spec_text,
            )
            # Recorded at once: a version the state database does not know of could be left
            # undecided by a kill (orchestration/reconcile.py decides the ones it knows).
            db.record_event(
                "ModelRegistered",
                {
                    "model": spec.name,
                    "version": registered.version,
                    "run_id": registered.run_id,
                    "store": model_cache.store_id(registry.uri),
                },
            )
            lost = _history_lost(db, registry)
        # Serving on this machine starts from this copy instead of a download.
        with _timed(parts, "cache"):
            entry = model_cache.store(
                layout,
                registry.model,
                registry.uri,
                registered.version,
                run_id=registered.run_id,
                package=package,
                info=package_info(
                    spec.name,
                    registered.version,
                    registered.run_id,
                    run_metrics,
                    {"batches": lineage, "trained_on": trained_on},
                ),
            )
        with _timed(parts, "compile_wait"):
            compiling.join()
    parts["compile"] = compiling.seconds  # in the thread, beside registration
    compiling.save(entry)
    parts["total_s"] = time.perf_counter() - started
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
        "refit_on_all": trained.refit,
        "served_rows": served_rows.height,
        "holdout": HOLDOUT,
        "inputs": lineage,
        "sections_hash": spec.section_hash(*TRAIN_SECTIONS),
        "timings": {k: round(v, 4) for k, v in parts.items()},
        "registry_warning": lost,
    }
    manifest = TrainManifest.model_validate(manifest).as_json()  # its shape, checked
    with atomic_output(out_dir) as tmp_dir:
        holdout.write_parquet(tmp_dir / HOLDOUT)
        seal(tmp_dir, manifest)
    return manifest


@contextlib.contextmanager
def _timed(parts: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's seconds to ``parts[name]``."""
    began = time.perf_counter()
    try:
        yield
    finally:
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - began


def _trained_on(trained: Trained) -> dict[str, Any]:
    """The rows behind each figure: the holdout metric's model learned from ``train_rows``
    and was scored on ``holdout_rows``; the served model learned from ``served_rows``."""
    return {
        "train_rows": trained.split.train.height,
        "holdout_rows": trained.split.holdout.height,
        "served_rows": trained.served_rows.height,
        "refit_on_all": trained.refit,
        "split": trained.split.kind,
    }


def _history_lost(db: StateDB, registry: Registry) -> str | None:
    """Say once, loudly, that the registry lost versions this project registered (checked
    after each registration: a store made again numbers its first model v1 again)."""
    from driftloop.models.registry import history_lost_message, lost_versions

    store = model_cache.store_id(registry.uri)
    reported = {
        str(v["run_id"])
        for e in db.events_after(0, types=("RegistryHistoryLost",))
        if e.get("model") == registry.model
        for v in e["versions"]
    }
    recorded = [
        e
        for e in db.events_after(0, types=("ModelRegistered",))
        if e.get("model") == registry.model
    ]
    if not recorded:
        return None
    present = {v.version: v.run_id for v in registry.versions()}
    lost = lost_versions(recorded, present, store, reported)
    if not lost:
        return None
    message = history_lost_message(registry.model, registry.uri, lost)
    log.info("%s", message)  # the run's summary prints it (the manifest's registry_warning)
    db.record_event(
        "RegistryHistoryLost",
        {"model": registry.model, "store": store, "versions": lost, "message": message},
    )
    return message


def _holdout_keys(holdout: pl.DataFrame) -> pl.DataFrame:
    """The holdout's lineage keys, in holdout order; checked before anything is registered."""
    missing = [k for k in HOLDOUT_KEYS if k not in holdout.columns]
    if missing:
        raise TrainError(
            f"the features lack the lineage column(s) {missing} needed to find the holdout's "
            "processed rows; a features.function that returns a frame must keep __file and __row"
        )
    return holdout.select(HOLDOUT_KEYS)


class _Compile(threading.Thread):
    """Compile and verify the new version for serving (a server then starts without
    importing scikit-learn), in a thread beside registration: it decides nothing about the
    promotion. Verified against the fitted pipeline in memory (no reload from the package).
    A model that does not compile is still served (by scikit-learn), so a failure is only
    logged, by :meth:`save`."""

    def __init__(self, package: Path, pipeline: Any) -> None:
        super().__init__(name="driftloop-compile", daemon=True)
        self.package, self.pipeline = package, pipeline
        self.verdict: Any = None
        self.error: Exception | None = None
        self.seconds = 0.0

    def run(self) -> None:
        from driftloop.models import inference
        from driftloop.models.package import Predictor

        began = time.perf_counter()
        try:
            predictor = Predictor(self.package, pipeline=self.pipeline)
            self.verdict = inference.compile_package(predictor, self.package)
        except Exception as exc:
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - began

    def save(self, entry: Path) -> None:
        """Keep the verified compiled path in the cache entry (after :meth:`join`)."""
        from driftloop.models import inference

        try:
            if self.error is not None:
                raise self.error
            inference.save(entry / model_cache.COMPILED, self.verdict)
        except Exception as exc:
            log.warning("compiling %s for serving failed: %s", entry, exc)
            return
        log.info("serving path for %s: %s", entry.name, self.verdict.reason)


def _holdout_predictions(trained: Trained, spec: Spec) -> pl.Series:
    """The evaluated model's predictions on the holdout (kept from scoring it in ``fit``)."""
    _, values, proba = _holdout_outputs(trained)
    classes = trained.evaluation_classes or trained.classes
    if classes is not None and len(classes) == 2:
        return pl.Series("prediction", proba[:, 1])
    return pl.Series("prediction", [str(v) for v in values] if classes else values)


def _holdout_outputs(trained: Trained) -> tuple[Any, Any, Any]:
    """(inputs as pandas, labels or values, probabilities or None) of the evaluated model on
    the holdout: those ``fit`` kept, else computed here."""
    if trained.holdout_outputs is not None:
        return trained.holdout_outputs
    from driftloop.models.inputs import to_pandas_inputs

    x = to_pandas_inputs(trained.split.holdout, trained.inputs, trained.categorical)
    model = trained.evaluated
    proba = model.predict_proba(x) if trained.classes is not None else None
    return x, model.predict(x), proba


def _monitoring_reference(
    trained: Trained, spec: Spec, predictions: pl.Series, parts: dict[str, float]
) -> dict[str, pl.DataFrame]:
    """What drift monitoring compares against: sorted training columns (target included;
    every row the served model learned from), the holdout's predictions, and the holdout's
    labels with the outputs of the model fitted without it."""
    from driftloop.models.profile import holdout_frame, reference_columns

    train = trained.served_rows.select([*trained.inputs, spec.target])
    x, values, proba = _holdout_outputs(trained)
    labels = trained.split.holdout.get_column(spec.target)
    with _timed(parts, "importance"):
        importance = _permutation_importance(trained, x, labels, spec)
    with _timed(parts, "reference"):
        columns = pl.concat(
            [
                reference_columns(
                    train,
                    roles={spec.target: "target"},
                    seed=spec.model.seed,
                    importance=importance,
                ),
                reference_columns(predictions.to_frame(), roles={"prediction": "prediction"}),
            ]
        )
        outputs = pl.Series("prediction", values)
        if trained.classes is None:
            holdout = holdout_frame(labels, outputs)
        else:
            classes = [str(c) for c in (trained.evaluation_classes or trained.classes)]
            holdout = holdout_frame(labels, outputs, proba, classes)
    return {"reference_columns": columns, "reference_holdout": holdout}


IMPORTANCE_ROWS = 1_000  # holdout rows permuted to rank the inputs (monitoring weights)


def _permutation_importance(
    trained: Trained, x: Any, labels: pl.Series, spec: Spec
) -> dict[str, float] | None:
    """Each input's permutation importance on (up to 1,000 rows of) the holdout: how much the
    model's score (accuracy or R^2) drops when that column is shuffled; None if it fails.

    Where the pipeline's preparation maps each input to one column by a value-by-value
    transform (passed through, imputed, ordinal-encoded: the tree estimators), the rows are
    prepared once and every shuffled copy is scored by the estimator in one prediction
    (:func:`_shuffled_scores`): the numbers of scikit-learn's ``permutation_importance`` on
    the whole pipeline, without its ``2 x inputs`` preparations and predictions.

    Elsewhere scikit-learn's many small predictions run on one OpenMP thread: on 1,000 rows
    a second thread costs more in synchronisation than it saves, and much more on a busy
    machine."""
    from sklearn.inspection import permutation_importance
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    y = labels.cast(pl.String if trained.classes else pl.Float64).to_numpy()
    rows = min(IMPORTANCE_ROWS, len(y))
    data = x.iloc[:rows]
    try:
        prepared = _prepared_once(trained.evaluated, data, trained.inputs)
        if prepared is not None:
            estimator, matrix, columns = prepared
            drops = _shuffled_scores(estimator, matrix, y[:rows], IMPORTANCE_REPEATS, spec)
        else:
            columns = list(trained.inputs)
            with threadpool_limits(limits=1, user_api="openmp"):
                drops = permutation_importance(
                    trained.evaluated,
                    data,
                    y[:rows],
                    n_repeats=IMPORTANCE_REPEATS,
                    random_state=spec.model.seed,
                    n_jobs=1,
                ).importances_mean
    except ValueError as exc:  # e.g. a holdout with one class only
        log.info("no permutation importance: %s", first_line(exc))
        return None
    return {c: max(0.0, float(v)) for c, v in zip(columns, drops, strict=True)}


IMPORTANCE_REPEATS = 2  # shuffles of each input
_PREDICT_ROWS = 100_000  # rows of shuffled copies scored in one prediction, at most


def _shuffled_scores(estimator: Any, x: Any, y: Any, repeats: int, spec: Spec) -> Any:
    """Each column's mean drop in the estimator's score (``score``: accuracy or R^2) over
    ``repeats`` shuffles of it: scikit-learn's ``permutation_importance(estimator, x, y,
    n_repeats=repeats, random_state=spec.model.seed).importances_mean``, shuffle for shuffle
    (the same seeds, each column's shuffles applied in turn to its shuffled copy), with the
    copies stacked so that the estimator predicts them in a few calls instead of one each."""
    from sklearn.metrics import accuracy_score, r2_score

    score = accuracy_score if spec.task == "classification" else r2_score
    seed = np.random.RandomState(spec.model.seed).randint(np.iinfo(np.int32).max + 1)
    copies = []
    for column in range(x.shape[1]):
        shuffles, order, shuffled = np.random.RandomState(seed), np.arange(len(x)), x.copy()
        for _ in range(repeats):
            shuffles.shuffle(order)
            shuffled[:, column] = shuffled[order, column]
            copies.append(shuffled.copy())
    per_call = max(1, _PREDICT_ROWS // len(x))
    predictions = [
        estimator.predict(np.concatenate(copies[i : i + per_call]))
        for i in range(0, len(copies), per_call)
    ]
    scores = np.array(
        [score(y, p) for p in np.split(np.concatenate(predictions), len(copies))]
    ).reshape(x.shape[1], repeats)
    return np.mean(score(y, estimator.predict(x)) - scores, axis=1)


# Transformers that map each value of a column to one value, whatever the other rows hold
# (a fitted "passthrough" is a FunctionTransformer without a function)
_VALUE_BY_VALUE = ("OrdinalEncoder", "SimpleImputer")


def _value_by_value(step: Any) -> bool:
    if isinstance(step, str):
        return step in ("passthrough", "drop")
    if type(step).__name__ == "FunctionTransformer":
        return getattr(step, "func", None) is None
    return type(step).__name__ in _VALUE_BY_VALUE


def _prepared_once(pipeline: Any, x: Any, inputs: list[str]) -> tuple[Any, Any, list[str]] | None:
    """(the estimator, ``x`` through the pipeline's preparation, each prepared column's input)
    when every input becomes one prepared column by a value-by-value transform; else None."""
    from sklearn.pipeline import Pipeline

    prepare = pipeline.named_steps.get("prepare")
    estimator = pipeline.named_steps.get("model")
    if prepare is None or estimator is None:
        return None
    for _, transformer, _ in prepare.transformers_:
        steps = transformer.steps if isinstance(transformer, Pipeline) else [(None, transformer)]
        if not all(_value_by_value(step) for _, step in steps):
            return None
    columns = [str(c) for c in prepare.get_feature_names_out()]
    if sorted(columns) != sorted(inputs):
        return None
    prepared = prepare.transform(x)
    return (estimator, prepared, columns) if isinstance(prepared, np.ndarray) else None
