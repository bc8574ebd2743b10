"""A compiled inference path for gradient-boosting models, verified against scikit-learn.

Shared by the train stage (which compiles each new version into the local model cache) and
by serving (which loads it from there, or compiles a downloaded version itself).

scikit-learn spends about a millisecond per ``predict_proba`` call on bookkeeping before any
tree is walked: the pandas conversion, the ColumnTransformer, input validation, and a Python
loop over the trees. On a server that is most of the cost of a request. For the default
estimator (``hist_gradient_boosting``), this module scores the same fitted model another
way: the model columns go straight from Polars to a NumPy matrix, categories are mapped to
the codes the fitted ``OrdinalEncoder`` learned, and the trees are evaluated by Treelite's
GTIL (imported from the fitted estimator, so it holds the same trees and thresholds).

Nothing is trusted blindly: :func:`compile_pipeline` scores verification rows (the training
sample stored in the model's reference profile, plus the warm-up records) both ways and
refuses the compiled path unless labels are identical and every probability or value agrees
within ``TOLERANCE``. A model it refuses is served by scikit-learn, with the reason in
``GET /model``.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

TOLERANCE = 1e-6


@dataclass
class CompiledPipeline:
    """Model columns -> predictions without scikit-learn on the request path."""

    layout: list[dict[str, Any]]  # the ColumnTransformer's output columns (see _layout)
    forest: Any  # treelite.Model
    classes: list[str] | None
    threads: int

    def __post_init__(self) -> None:
        self.columns = _expressions(self.layout)

    def predict_features(self, features: pl.DataFrame) -> tuple[Any, Any]:
        """(labels or values, class probabilities or None), like ``Predictor.predict_features``."""
        import treelite.gtil

        x = np.ascontiguousarray(features.select(self.columns).to_numpy(), dtype=np.float64)
        out = treelite.gtil.predict(self.forest, x, nthread=self.threads)
        out = np.asarray(out).reshape(x.shape[0], -1)
        if self.classes is None:
            return out[:, 0], None
        if len(self.classes) == 2:
            positive = out[:, 0]
            proba = np.column_stack([1.0 - positive, positive])
        else:
            proba = out
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)], proba


@dataclass(frozen=True)
class Verdict:
    """Whether the compiled path may serve, and the evidence."""

    compiled: CompiledPipeline | None
    reason: str
    rows: int = 0
    max_difference: float = 0.0


def compile_pipeline(predictor: Any, rows: list[pl.DataFrame], *, threads: int = 1) -> Verdict:
    """A verified compiled path for the predictor's pipeline, or the reason there is none."""
    if predictor.spec.model.estimator != "hist_gradient_boosting":
        return Verdict(None, f"no compiled path for {predictor.spec.model.estimator}")
    try:
        import treelite.sklearn
    except ImportError:  # pragma: no cover - treelite is a dependency
        return Verdict(None, "treelite is not installed")
    try:
        layout = _layout(predictor.pipeline.named_steps["prepare"], predictor.inputs)
        with warnings.catch_warnings():
            # Treelite casts gradient boosting's category list to integers, including the
            # NaN entry scikit-learn keeps for missing values, which NumPy warns about; a
            # missing value never takes that path (it follows the split's missing branch),
            # and the verification below checks rows with missing categories.
            warnings.simplefilter("ignore", RuntimeWarning)
            forest = treelite.sklearn.import_model(predictor.pipeline.named_steps["model"])
    except Exception as exc:  # an unexpected pipeline shape: scikit-learn serves it
        return Verdict(None, f"cannot compile ({type(exc).__name__}: {exc})")
    compiled = CompiledPipeline(layout, forest, predictor.classes, threads)
    return verify(compiled, predictor, rows)


def verify(compiled: CompiledPipeline, predictor: Any, rows: list[pl.DataFrame]) -> Verdict:
    """Score ``rows`` both ways; accept only identical labels and values within TOLERANCE."""
    frames = [f for f in rows if f.height]
    if not frames:
        return Verdict(None, "no rows to verify the compiled path on")
    worst = 0.0
    count = 0
    for frame in frames:
        want_labels, want = predictor.predict_features(frame)
        got_labels, got = compiled.predict_features(frame)
        if want is None:  # a regressor: compare values, relative to their size
            want, got = np.asarray(want_labels, float), np.asarray(got_labels, float)
            scale = np.maximum(1.0, np.abs(want))
            worst = max(worst, float(np.max(np.abs(got - want) / scale)))
        else:
            if not np.array_equal(np.asarray(want_labels), np.asarray(got_labels)):
                return Verdict(None, "compiled labels differ from scikit-learn's", count)
            worst = max(worst, float(np.max(np.abs(np.asarray(got) - np.asarray(want)))))
        count += frame.height
    if not worst <= TOLERANCE:
        return Verdict(
            None, f"compiled predictions differ by {worst:.3g} (> {TOLERANCE:g})", count, worst
        )
    return Verdict(compiled, "treelite, verified against scikit-learn", count, worst)


def _layout(prepare: Any, inputs: list[str]) -> list[dict[str, Any]]:
    """The fitted ColumnTransformer (numbers passed through, categories ordinal-encoded) as a
    JSON-able description of the matrix it makes; anything else is refused."""
    out: list[dict[str, Any]] = []
    seen: list[str] = []
    for name, transformer, columns in prepare.transformers_:
        if len(columns) == 0:  # an empty selection is never fitted (no categories, say)
            continue
        if name == "num":
            out += [{"column": c} for c in columns]
        elif name == "cat":
            out += _ordinal(transformer, list(columns))
        else:
            raise ValueError(f"transformer {name!r}")
        seen += list(columns)
    if sorted(seen) != sorted(inputs):
        raise ValueError(f"columns {seen} are not the model inputs {inputs}")
    return out


def _ordinal(encoder: Any, columns: list[str]) -> list[dict[str, Any]]:
    """OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=nan,
    encoded_missing_value=nan), including its grouping of infrequent categories."""
    if not (np.isnan(encoder.unknown_value) and np.isnan(encoder.encoded_missing_value)):
        raise ValueError("an encoder that codes unknown or missing values as numbers")
    mappings = getattr(encoder, "_default_to_infrequent_mappings", None) or [None] * len(columns)
    out = []
    for column, categories, mapping in zip(columns, encoder.categories_, mappings, strict=True):
        # A category's code is its index in categories_, mapped when scikit-learn groups the
        # infrequent ones; that mapping leaves out the missing-value entry (NaN, sorted last).
        index = [i for i, c in enumerate(categories) if isinstance(c, str)]
        codes = np.asarray(mapping)[index] if mapping is not None else np.asarray(index)
        known = [(str(categories[i]), float(k)) for i, k in zip(index, codes, strict=True)]
        out.append(
            {"column": column, "categories": [c for c, _ in known], "codes": [k for _, k in known]}
        )
    return out


def _expressions(layout: list[dict[str, Any]]) -> list[pl.Expr]:
    """Polars expressions that build the matrix a layout describes (unknown/missing -> NaN)."""
    exprs = []
    for item in layout:
        column = pl.col(item["column"])
        if "categories" not in item:
            exprs.append(column.cast(pl.Float64))
            continue
        exprs.append(
            column.cast(pl.String)
            .replace_strict(
                item["categories"], item["codes"], default=None, return_dtype=pl.Float64
            )
            .alias(item["column"])
        )
    return exprs


def sample_rows(profile: dict[str, Any], inputs: list[str], categorical: list[str]) -> pl.DataFrame:
    """The training sample stored in a reference profile, as model columns."""
    columns = (profile.get("sample") or {}).get("columns") or {}
    if not all(c in columns for c in inputs):
        return pl.DataFrame()
    return pl.DataFrame(
        {
            c: pl.Series(c, columns[c], pl.String if c in categorical else pl.Float64, strict=False)
            for c in inputs
        }
    )


FOREST = "forest.treelite"
META = "compiled.json"


def save(folder: Path, verdict: Verdict) -> None:
    """Keep a verified compiled path beside a cached package (written once, atomically)."""
    import treelite

    compiled = verdict.compiled
    if compiled is None or (folder / META).is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        compiled.forest.serialize(str(tmp / FOREST))
        meta = {
            "layout": compiled.layout,
            "classes": compiled.classes,
            "reason": verdict.reason,
            "verified_rows": verdict.rows,
            "max_difference": verdict.max_difference,
            "treelite": treelite.__version__,
        }
        (tmp / META).write_text(json.dumps(meta), encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / META).is_file():  # not another worker's copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(folder: Path, threads: int = 1) -> Verdict | None:
    """A compiled path saved by :func:`save`, or None (absent, or another Treelite wrote it)."""
    import treelite

    meta_path = folder / META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("treelite") != treelite.__version__:
        return None
    forest = treelite.Model.deserialize(str(folder / FOREST))
    compiled = CompiledPipeline(meta["layout"], forest, meta["classes"], threads)
    return Verdict(compiled, meta["reason"], meta["verified_rows"], meta["max_difference"])


def compile_package(
    predictor: Any, package: Path, *, extra: list[pl.DataFrame] | None = None, threads: int = 1
) -> Verdict:
    """A package's compiled path, verified on the training sample in its reference profile
    (and on ``extra`` rows of model columns)."""
    profile_path = package / "reference_profile.json"
    profile = json.loads(profile_path.read_text()) if profile_path.is_file() else {}
    sample = sample_rows(profile, predictor.inputs, predictor.categorical)
    return compile_pipeline(predictor, [sample, *(extra or [])], threads=threads)


def precompile(package: Path, folder: Path, threads: int = 1) -> Verdict:
    """Compile and verify a package folder's model and keep the result in ``folder``."""
    from driftloop.models.package import Predictor

    verdict = compile_package(Predictor(package), package, threads=threads)
    save(folder, verdict)
    return verdict
