"""A registered model that needs no project files: MLflow pyfunc around driftloop's pieces.

The package holds the fitted scikit-learn pipeline (skops format), the spec sections that
turn raw records into model inputs (contract and features), the user's feature module if
any, the input signature and the training reference profile. ``predict`` takes raw records
(the contract's columns, before feature engineering) and runs the same parsing and the same
feature function as the batch pipeline, so there is no training/serving skew.

Trust boundary: the pipeline is loaded with skops, which refuses any type outside
scikit-learn, NumPy and SciPy (and ``functools.partial``, which scikit-learn stores). The
wrapper class is stored by MLflow (pyfunc format, by reference to this module), and the
user's feature module is Python code that runs on load. Load models only from a registry
you trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from driftloop.core.errors import RegistryError

PIPELINE = "pipeline.skops"
# The same configuration fitted without the holdout, when the served pipeline was fitted
# again on every row (model.refit_on_all): the gate scores a champion with this one, so that
# champion and challenger are compared as models that never saw the holdout.
EVALUATION_PIPELINE = "evaluation_pipeline.skops"
META = "driftloop_model.json"
USER_CODE = "user_code"
# What the README promises: scikit-learn, NumPy and SciPy, and functools.partial (which
# scikit-learn stores around its own functions; a partial's function is checked as any other
# name). Nothing from ``builtins``: skops already trusts plain values (int, str, list, ...),
# and what else it would name there is code (``builtins.eval``, ``exec``, ``getattr``,
# ``__import__``, ``open``).
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")
TRUSTED_TYPES = ("functools.partial",)


def save_pipeline(pipeline: Any, path: Path) -> None:
    import skops.io as sio

    sio.dump(pipeline, path)


def load_pipeline(path: Path) -> Any:
    """Load with skops, trusting only scikit-learn, NumPy and SciPy types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    foreign = [
        t for t in untrusted if not t.startswith(TRUSTED_PREFIXES) and t not in TRUSTED_TYPES
    ]
    if foreign:
        raise RegistryError(
            f"{path}: the model file holds types outside scikit-learn/NumPy/SciPy "
            f"({foreign[:5]}); refusing to load it: a model must be a scikit-learn pipeline "
            "of these libraries' types; retrain it with driftloop, or load it only if you "
            "trust whoever wrote it"
        )
    return sio.load(path, trusted=untrusted)


def input_signature(spec: Any) -> Any:
    """The MLflow signature of the raw records a model takes."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    # Dates arrive as ISO text (JSON) or as typed values (a DataFrame); MLflow's "string"
    # refuses the second and "datetime" the first, so they are "any" and parsed by the
    # contract inside the model.
    anything = AnyType()  # type: ignore[no-untyped-call]  # mlflow leaves __init__ untyped
    kinds: dict[str, Any] = {
        "int": "long",
        "float": "double",
        "str": "string",
        "bool": "boolean",
        "date": anything,
        "datetime": anything,
    }
    columns: list[Any] = [
        ColSpec(kinds[rule.dtype], name, required=not rule.nullable)
        for name, rule in spec.contract.columns.items()
        if name != spec.target
    ]
    return ModelSignature(inputs=Schema(columns))


def package_signature(folder: Path) -> Any:
    """:func:`input_signature` of the spec stored in a package folder."""
    from driftloop.core.spec import parse_spec

    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    return input_signature(parse_spec(meta["spec"], where=f"{folder / META}"))


def raw_records(frame: Any, spec: Any) -> pl.DataFrame:
    """Records (pandas, polars, or a list of dicts) as typed contract columns.

    Text is parsed as the contract says (the same parsing prep uses); values that already
    have a type are cast to it.
    """
    from driftloop.prep.rules import POLARS_TYPES, parsed

    if isinstance(frame, pl.DataFrame):
        data = frame
    elif isinstance(frame, list):
        data = pl.DataFrame(frame, strict=False)
    else:
        data = pl.from_pandas(frame)
    exprs = []
    for name, rule in spec.contract.columns.items():
        if name not in data.columns:
            exprs.append(pl.lit(None, POLARS_TYPES[rule.dtype]).alias(name))
        elif data.schema[name] == pl.String and rule.dtype != "str":
            exprs.append(parsed(name, rule))
        else:
            exprs.append(pl.col(name).cast(POLARS_TYPES[rule.dtype], strict=False))
    return data.select(exprs)


class Predictor:
    """The loaded pieces of a driftloop model; used by the pyfunc wrapper and by tests.

    ``evaluation=True`` gives the model whose holdout scores the version was registered
    with: the pipeline fitted without the holdout when the served one was fitted again on
    every row (``EVALUATION_PIPELINE``), else the served pipeline itself.
    ``pipeline``: the served pipeline already in memory (not with ``evaluation``).
    """

    def __init__(self, folder: Path, *, evaluation: bool = False, pipeline: Any = None) -> None:
        from driftloop.core.spec import parse_spec
        from driftloop.features.compute import load_user_function

        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        self.spec = parse_spec(meta["spec"], where=f"{folder / META}")
        self.inputs: list[str] = meta["inputs"]
        self.categorical: list[str] = meta["categorical"]
        self.classes: list[str] | None = meta["classes"]
        self.file = PIPELINE
        if evaluation and (folder / EVALUATION_PIPELINE).is_file():
            self.file = EVALUATION_PIPELINE
            self.classes = meta["evaluation_classes"]
        self._folder = folder
        # ``pipeline``: the fitted pipeline the folder's file holds, already in memory (the
        # train stage's, which spares loading it again)
        self._pipeline: Any = pipeline
        reference = self.spec.features.function
        self.user_function = (
            load_user_function(reference, folder / USER_CODE) if reference else None
        )

    @property
    def pipeline(self) -> Any:
        """The fitted scikit-learn pipeline, loaded on first use (serving from a verified
        compiled path never needs it, nor the import of scikit-learn)."""
        if self._pipeline is None:
            self._pipeline = load_pipeline(self._folder / self.file)
        return self._pipeline

    def features(self, records: Any) -> pl.DataFrame:
        from driftloop.features.compute import build_features

        typed = raw_records(records, self.spec)
        return build_features(typed.lazy(), self.spec, self.user_function).collect()

    def predict(self, records: Any) -> pl.DataFrame:
        """Predictions for raw records: ``prediction`` and, for classifiers, ``proba_<class>``."""
        labels, proba = self.predict_features(self.features(records))
        out: dict[str, Any] = {"prediction": labels}
        if proba is not None:
            for i, cls in enumerate(self.classes or ()):
                out[f"proba_{cls}"] = proba[:, i]
        return pl.DataFrame(out)

    def predict_features(self, features: pl.DataFrame) -> tuple[Any, Any]:
        """(labels or values, class probabilities or None) for rows of model columns.

        A classifier's label is the class of highest probability, which is what each of
        driftloop's estimators' ``predict`` returns; computing it from ``predict_proba`` saves
        a second pass through the pipeline.
        """
        import numpy as np

        from driftloop.models.inputs import to_pandas_inputs

        x = to_pandas_inputs(features, self.inputs, self.categorical)
        if self.classes is None:
            return self.pipeline.predict(x), None
        proba = self.pipeline.predict_proba(x)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)], proba


def write_package(
    folder: Path,
    *,
    spec: Any,
    pipeline: Any,
    inputs: list[str],
    categorical: list[str],
    classes: list[str] | None,
    user_module: Path | None,
    profile: dict[str, Any],
    monitoring: dict[str, pl.DataFrame] | None = None,
    evaluation: Any = None,
    evaluation_classes: list[str] | None = None,
    trained_on: dict[str, Any] | None = None,
) -> None:
    """Everything ``Predictor`` needs, in one folder (and what monitoring compares against:
    ``monitoring`` frames are written as ``<name>.parquet``, see driftloop.profile).
    ``evaluation``: the pipeline fitted without the holdout, when ``pipeline`` (the one
    served) learned from it too; ``trained_on``: the rows each learned from."""
    folder.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipeline, folder / PIPELINE)
    if evaluation is not None:
        save_pipeline(evaluation, folder / EVALUATION_PIPELINE)
    meta = {
        "spec": spec.model_dump(mode="json"),
        "inputs": inputs,
        "categorical": categorical,
        "classes": classes,
        "evaluation_classes": evaluation_classes if evaluation is not None else classes,
        "trained_on": trained_on,
    }
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    from driftloop.models.profile import profile_to_json, write_monitoring_frame

    (folder / "reference_profile.json").write_text(profile_to_json(profile), encoding="utf-8")
    for name, frame in (monitoring or {}).items():
        write_monitoring_frame(frame, folder / f"{name}.parquet")
    if user_module is not None:
        reference = spec.features.function
        target = folder / USER_CODE / (reference.partition(":")[0].replace(".", "/") + ".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(user_module.read_bytes())
