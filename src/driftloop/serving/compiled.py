"""A compiled inference path for gradient-boosting models, verified against scikit-learn.

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

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

TOLERANCE = 1e-6


@dataclass
class CompiledPipeline:
    """Model columns -> predictions without scikit-learn on the request path."""

    columns: list[pl.Expr]  # the ColumnTransformer's output, as Polars expressions
    forest: Any  # treelite.Model
    classes: list[str] | None
    threads: int

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
        columns = _columns(predictor.pipeline.named_steps["prepare"], predictor.inputs)
        with warnings.catch_warnings():
            # Treelite casts gradient boosting's category list to integers, including the
            # NaN entry scikit-learn keeps for missing values, which NumPy warns about; a
            # missing value never takes that path (it follows the split's missing branch),
            # and the verification below checks rows with missing categories.
            warnings.simplefilter("ignore", RuntimeWarning)
            forest = treelite.sklearn.import_model(predictor.pipeline.named_steps["model"])
    except Exception as exc:  # an unexpected pipeline shape: scikit-learn serves it
        return Verdict(None, f"cannot compile ({type(exc).__name__}: {exc})")
    compiled = CompiledPipeline(columns, forest, predictor.classes, threads)
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


def _columns(prepare: Any, inputs: list[str]) -> list[pl.Expr]:
    """The fitted ColumnTransformer (numbers passed through, categories ordinal-encoded) as
    Polars expressions giving the same matrix; anything else is refused."""
    out: list[pl.Expr] = []
    seen: list[str] = []
    for name, transformer, columns in prepare.transformers_:
        if len(columns) == 0:  # an empty selection is never fitted (no categories, say)
            continue
        if name == "remainder":
            raise ValueError(f"remainder columns {list(columns)}")
        if name == "num":
            out += [pl.col(c).cast(pl.Float64) for c in columns]
        elif name == "cat":
            out += _ordinal(transformer, list(columns))
        else:
            raise ValueError(f"transformer {name!r}")
        seen += list(columns)
    if sorted(seen) != sorted(inputs):
        raise ValueError(f"columns {seen} are not the model inputs {inputs}")
    return out


def _ordinal(encoder: Any, columns: list[str]) -> list[pl.Expr]:
    """OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=nan,
    encoded_missing_value=nan), including its grouping of infrequent categories."""
    if not (np.isnan(encoder.unknown_value) and np.isnan(encoder.encoded_missing_value)):
        raise ValueError("an encoder that codes unknown or missing values as numbers")
    mappings = getattr(encoder, "_default_to_infrequent_mappings", None) or [None] * len(columns)
    exprs = []
    for column, categories, mapping in zip(columns, encoder.categories_, mappings, strict=True):
        codes = np.arange(len(categories))
        if mapping is not None:
            codes = np.asarray(mapping)[codes]
        known = [
            (str(c), float(code))
            for c, code in zip(categories, codes, strict=True)
            if isinstance(c, str)
        ]
        exprs.append(
            pl.col(column)
            .cast(pl.String)
            .replace_strict(
                [k for k, _ in known], [v for _, v in known], default=None, return_dtype=pl.Float64
            )
            .alias(column)
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
