"""Train: pick the training window, split off the newest holdout, fit, and score.

Pure functions of a features frame and the spec; randomness arrives as the spec's seed.
The estimator is a scikit-learn Pipeline whose preprocessing (imputation, categorical
encoding, scaling where the estimator needs it) is fitted on the training rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from driftloop.core.errors import TrainError
from driftloop.core.spec import Spec
from driftloop.models.inputs import BATCH, to_pandas_inputs
from driftloop.models.metrics import score

_TEMPORAL = (pl.Date, pl.Datetime)


@dataclass(frozen=True)
class Split:
    train: pl.DataFrame
    holdout: pl.DataFrame
    kind: str  # time | arrival | random


@dataclass
class Trained:
    """A fitted model and its evidence.

    ``evaluation`` is the pipeline fitted on ``split.train`` alone, whose holdout scores are
    ``metrics`` (what the gate compares); ``pipeline`` is the one served: the same
    configuration fitted again on every row of the window (``split.train`` and
    ``split.holdout``) when ``model.refit_on_all`` is true, else ``evaluation`` itself.
    """

    pipeline: Any  # the fitted sklearn Pipeline that is served
    inputs: list[str]  # model input columns, in order
    categorical: list[str]
    classes: list[Any] | None  # the served pipeline's
    metrics: dict[str, float]  # the evaluation pipeline's, on the holdout
    baseline: dict[str, float]
    split: Split
    evaluation: Any = None  # the pipeline fitted without the holdout (None: ``pipeline``)
    evaluation_classes: list[Any] | None = None
    # What the evaluated pipeline made of the holdout, kept from scoring it so that the
    # stage's reference and predictions do not run the holdout through it again:
    # (model inputs as pandas, labels or values, class probabilities or None).
    holdout_outputs: tuple[Any, Any, Any] | None = None

    @property
    def refit(self) -> bool:
        """Whether the served pipeline learned from the holdout too."""
        return self.evaluation is not None

    @property
    def evaluated(self) -> Any:
        """The pipeline whose holdout scores are ``metrics``."""
        return self.evaluation if self.evaluation is not None else self.pipeline

    @cached_property
    def served_rows(self) -> pl.DataFrame:
        """The rows the served pipeline learned from (concatenated once)."""
        if self.refit:
            return pl.concat([self.split.train, self.split.holdout], how="vertical_relaxed")
        return self.split.train


def model_inputs(frame: pl.DataFrame, spec: Spec) -> tuple[list[str], list[str]]:
    """(input columns, the categorical ones): features minus target, ids, lineage, dates."""
    skip = {spec.target, spec.id_column, spec.time_column}
    inputs = [
        c
        for c, dtype in frame.schema.items()
        if c not in skip and not c.startswith("__") and not isinstance(dtype, _TEMPORAL)
    ]
    categorical = [c for c in inputs if frame.schema[c] in (pl.String, pl.Categorical)]
    return inputs, categorical


def order_rows(frame: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """Oldest first: by the time column, else by arrival (batch, file, row)."""
    arrival = [c for c in (BATCH, "__file", "__row") if c in frame.columns]
    if spec.time_column is not None:
        return frame.sort([spec.time_column, *arrival], nulls_last=False, maintain_order=True)
    return frame.sort(arrival, maintain_order=True) if arrival else frame


def training_window(frame: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """The newest rows the window policy keeps (the frame is ordered oldest first)."""
    window = spec.model.window
    if window.kind == "all":
        return frame
    assert window.size is not None
    if window.kind == "last_rows":
        return frame.tail(window.size)
    if spec.time_column is None:
        raise TrainError(
            "model.window kind 'last_days' needs a time_column; set time_column in "
            "driftloop.yaml or use kind 'last_rows'"
        )
    newest = frame.get_column(spec.time_column).max()
    start = newest - timedelta(days=window.size)  # type: ignore[operator]
    return frame.filter(pl.col(spec.time_column) > start)


def split_holdout(frame: pl.DataFrame, spec: Spec) -> Split:
    """The newest slice is the holdout; random (stratified) only where there is no order."""
    kind = spec.model.split
    batches = frame.get_column(BATCH).n_unique() if BATCH in frame.columns else 1
    if kind == "auto":
        kind = "time" if spec.time_column else "arrival" if batches > 1 else "random"
    if kind == "time" and spec.time_column is None:
        raise TrainError("model.split 'time' needs a time_column in driftloop.yaml")
    holdout_spec = spec.model.holdout
    if kind == "random":
        rng = np.random.default_rng(spec.model.seed)
        n_test = max(1, round(frame.height * holdout_spec.fraction))
        labels = frame.get_column(spec.target).to_numpy()
        test_idx = (
            _stratified(labels, n_test, rng)
            if spec.task == "classification"
            else (rng.permutation(frame.height)[:n_test])
        )
        mask = np.zeros(frame.height, dtype=bool)
        mask[test_idx] = True
        series = pl.Series(mask)
        return Split(frame.filter(~series), frame.filter(series), kind)
    if kind == "time" and holdout_spec.days is not None:
        assert spec.time_column is not None
        newest = frame.get_column(spec.time_column).max()
        start = newest - timedelta(days=holdout_spec.days)  # type: ignore[operator]
        is_test = pl.col(spec.time_column) > start
        return Split(frame.filter(~is_test), frame.filter(is_test), kind)
    cut = frame.height - max(1, round(frame.height * holdout_spec.fraction))
    if kind == "time" and spec.time_column is not None and 0 < cut < frame.height:
        # Rows that share a timestamp stay on one side: the holdout starts at the cut's time.
        start = frame.get_column(spec.time_column)[cut]
        is_test = pl.col(spec.time_column) >= start
        return Split(frame.filter(~is_test), frame.filter(is_test), kind)
    return Split(frame.head(cut), frame.slice(cut), kind)


def _stratified(labels: np.ndarray[Any, Any], n_test: int, rng: np.random.Generator) -> Any:
    picked: list[int] = []
    values, counts = np.unique(labels.astype(str), return_counts=True)
    for value, count in zip(values, counts, strict=True):
        idx = np.flatnonzero(labels.astype(str) == value)
        take = max(1, round(n_test * count / len(labels))) if count > 1 else 0
        picked.extend(rng.permutation(idx)[:take].tolist())
    return np.asarray(sorted(picked))


def check_trainable(frame: pl.DataFrame, split: Split, spec: Spec) -> None:
    """Refuse data no model should be trained on, before any fitting."""
    if spec.target not in frame.columns:
        raise TrainError(
            f"target {spec.target!r} is not in the features; check features.exclude and "
            "the contract in driftloop.yaml"
        )
    minimum = spec.model.min_rows
    if split.train.height < minimum or split.holdout.height < 1:
        raise TrainError(
            f"too few rows to train and hold out: {split.train.height} to train and "
            f"{split.holdout.height} to evaluate, need at least {minimum} to train "
            "(model.min_rows); land more data or lower model.holdout.fraction"
        )
    distinct = split.train.get_column(spec.target).n_unique()
    if distinct < 2:
        raise TrainError(
            f"the target {spec.target!r} has a single value in the training rows; a model "
            "cannot learn from a constant target; check the data or the target column"
        )
    if spec.task == "regression" and not split.train.schema[spec.target].is_numeric():
        raise TrainError(
            f"task is regression but target {spec.target!r} is {split.train.schema[spec.target]}; "
            "use task: classification or a numeric target"
        )


# Ordinal codes a categorical input may take: gradient boosting takes at most 255 categories
MAX_CODES = 255


def groups_rare(frame: pl.DataFrame, categorical: list[str]) -> bool:
    """Whether a categorical column of ``frame`` has so many distinct values (null counted)
    that the encoder may have to group the rarest into one code: :data:`MAX_CODES` or more
    (scikit-learn's ``max_categories`` counts the shared code, so it groups from 255 values
    that are not null).

    Only then is the encoder built to group them: scikit-learn counts every value in Python
    to find the rare ones (0.2 s a fit on 41k rows of 10 such columns, against 0.02 s
    without), and below that there are none to group, so the codes are the same either
    way."""
    if not categorical:
        return False
    counts = frame.select(pl.col(c).n_unique() for c in categorical).row(0)
    return max(int(n) for n in counts) >= MAX_CODES


def build_pipeline(
    spec: Spec, inputs: list[str], categorical: list[str], *, group_rare: bool = True
) -> Any:
    """Preprocessing + estimator as one scikit-learn Pipeline (``group_rare``: see
    :func:`groups_rare`)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = [c for c in inputs if c not in categorical]
    estimator = spec.model.estimator
    params = dict(spec.model.params)
    seed = spec.model.seed
    classify = spec.task == "classification"
    ordinal = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=MAX_CODES if group_rare else None,  # rarer ones share a code
    )
    if estimator == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        pre = ColumnTransformer(
            [("num", "passthrough", numeric), ("cat", ordinal, categorical)],
            verbose_feature_names_out=False,
        )
        cat_mask = [False] * len(numeric) + [True] * len(categorical)
        cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        model: Any = cls(random_state=seed, categorical_features=cat_mask, **params)
    elif estimator == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cat_steps = Pipeline(
            [("encode", ordinal), ("impute", SimpleImputer(strategy="constant", fill_value=-1))]
        )
        pre = ColumnTransformer(
            [("num", SimpleImputer(strategy="median"), numeric), ("cat", cat_steps, categorical)],
            verbose_feature_names_out=False,
        )
        params.setdefault("n_estimators", 200)
        params.setdefault("n_jobs", 1)
        cls = RandomForestClassifier if classify else RandomForestRegressor
        model = cls(random_state=seed, **params)
    else:
        from sklearn.linear_model import LinearRegression, LogisticRegression

        num_steps = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        cat_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=5)),
            ]
        )
        pre = ColumnTransformer(
            [("num", num_steps, numeric), ("cat", cat_steps, categorical)],
            verbose_feature_names_out=False,
        )
        if estimator == "logistic_regression":
            params.setdefault("max_iter", 1000)
            model = LogisticRegression(random_state=seed, **params)
        else:
            model = LinearRegression(**params)
    return Pipeline([("prepare", pre), ("model", model)])


def check_model_params(spec: Spec) -> None:
    """Build the estimator from the spec's params and validate them, before any work."""
    from driftloop.core.errors import SpecError

    try:
        estimator = build_pipeline(spec, ["x"], []).named_steps["model"]
        validate = getattr(estimator, "_validate_params", None)  # sklearn's own checks
        if validate is not None:
            validate()
    except (TypeError, ValueError) as exc:
        raise SpecError(
            f"driftloop.yaml: model.params {dict(spec.model.params)} do not fit "
            f"{spec.model.estimator}: {str(exc).splitlines()[0]}"
        ) from None


def fit(frame: pl.DataFrame, spec: Spec) -> Trained:
    """Window, split, check, fit, score on the holdout, and score the naive baseline."""
    if spec.target not in frame.columns:
        raise TrainError(
            f"target {spec.target!r} is not in the features; check features.exclude, "
            "features.function and the contract in driftloop.yaml"
        )
    ordered = training_window(
        order_rows(frame.filter(pl.col(spec.target).is_not_null()), spec), spec
    )
    split = split_holdout(ordered, spec)
    check_trainable(ordered, split, spec)
    inputs, categorical = model_inputs(ordered, spec)
    if not inputs:
        raise TrainError(
            "no model input columns are left after excluding ids, dates and the target"
        )
    pipeline = build_pipeline(
        spec, inputs, categorical, group_rare=groups_rare(ordered, categorical)
    )
    x_train = to_pandas_inputs(split.train, inputs, categorical)
    y_train = _target(split.train, spec)
    pipeline.fit(x_train, y_train)
    classes = list(pipeline.classes_) if spec.task == "classification" else None
    x_test = to_pandas_inputs(split.holdout, inputs, categorical)
    y_test = _target(split.holdout, spec)
    labels, proba, order = _predict(pipeline, x_test, spec)
    metrics = score(spec, y_test, labels, proba, order)
    baseline = score(spec, y_test, *_predict(_baseline(spec).fit(x_train, y_train), x_test, spec))
    trained = Trained(
        pipeline,
        inputs,
        categorical,
        classes,
        metrics,
        baseline,
        split,
        holdout_outputs=(x_test, labels, proba),
    )
    return refit_on_all(trained, spec) if spec.model.refit_on_all else trained


def refit_on_all(trained: Trained, spec: Spec) -> Trained:
    """The same configuration fitted again on every row of the window, holdout included,
    to be served; the holdout's scores stay those of the model fitted without it."""
    rows = pl.concat([trained.split.train, trained.split.holdout], how="vertical_relaxed")
    served = build_pipeline(
        spec,
        trained.inputs,
        trained.categorical,
        group_rare=groups_rare(rows, trained.categorical),
    )
    served.fit(to_pandas_inputs(rows, trained.inputs, trained.categorical), _target(rows, spec))
    return Trained(
        pipeline=served,
        inputs=trained.inputs,
        categorical=trained.categorical,
        classes=list(served.classes_) if spec.task == "classification" else None,
        metrics=trained.metrics,
        baseline=trained.baseline,
        split=trained.split,
        evaluation=trained.pipeline,
        evaluation_classes=trained.classes,
        holdout_outputs=trained.holdout_outputs,
    )


def _target(frame: pl.DataFrame, spec: Spec) -> Any:
    target = frame.get_column(spec.target)
    if spec.task == "classification":
        return target.cast(pl.String).to_numpy().astype(object)
    return target.cast(pl.Float64).to_numpy()


def _baseline(spec: Spec) -> Any:
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if spec.task == "classification":
        return DummyClassifier(strategy="prior")
    return DummyRegressor(strategy="mean")


def _predict(model: Any, x: Any, spec: Spec) -> tuple[Any, Any, list[Any] | None]:
    """(labels or values, class probabilities or None, the probabilities' class order).

    A classifier's label is its class of highest probability, which is what each of
    driftloop's estimators' (and the prior baseline's) ``predict`` returns: taken from
    ``predict_proba``, the holdout goes through the pipeline once, not twice (as
    ``models.package.Predictor`` does)."""
    if spec.task == "classification":
        proba = model.predict_proba(x)
        labels = np.asarray(model.classes_, dtype=object)[proba.argmax(axis=1)]
        return labels, proba, [str(c) for c in model.classes_]
    return model.predict(x), None, None
