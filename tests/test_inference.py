"""The compiled inference path: accepted only when it reproduces scikit-learn, kept and reloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftloop.core.spec import parse_spec, read_yaml
from driftloop.models import inference
from driftloop.models.package import Predictor
from driftloop.train.fit import fit

from .helpers import write_bare_package

SPEC = """
name: compiled
task: {task}
target: y
sources: [{{name: s, path: data/raw/s/*.csv}}]
contract:
  columns:
    x1: {{dtype: float}}
    x2: {{dtype: float}}
    c: {{dtype: str}}
    d: {{dtype: str}}
    y: {{dtype: {target}, nullable: false}}
model: {{estimator: {estimator}, split: random}}
"""


def package(
    tmp_path: Path, *, task: str = "classification", estimator: str = "hist_gradient_boosting"
) -> Predictor:
    """A fitted model written as a package folder, with 300+ categories in 'c' (so scikit-learn
    groups the infrequent ones) and missing values everywhere."""
    target = "str" if task == "classification" else "float"
    spec = parse_spec(read_yaml(SPEC.format(task=task, target=target, estimator=estimator)))
    rng = np.random.default_rng(3)
    n = 4000
    c = rng.choice(
        [f"k{i}" for i in range(320)], n, p=np.r_[np.full(20, 0.04), np.full(300, 0.2 / 300)]
    )
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    signal = x1 - x2 + (np.char.str_len(c.astype(str)) > 2) * 0.7
    frame = pl.DataFrame(
        {
            "x1": np.where(rng.random(n) < 0.05, np.nan, x1),
            "x2": x2,
            "c": [None if rng.random() < 0.05 else v for v in c],
            "d": rng.choice(["u", "v", "w"], n),
            "y": np.where(signal + rng.normal(size=n) > 0, "yes", "no")
            if target == "str"
            else signal,
        }
    ).with_columns(pl.col("x1").fill_nan(None))
    trained = fit(frame, spec)
    folder = tmp_path / "pkg"
    write_bare_package(folder, spec, trained)
    return Predictor(folder)


def rows(predictor: Predictor) -> pl.DataFrame:
    profile_rows = inference.sample_rows(
        __import__("json").loads((predictor._folder / "reference_profile.json").read_text()),
        predictor.inputs,
        predictor.categorical,
    )
    unseen = pl.DataFrame(
        {"x1": [0.1, None], "x2": [1.0, 2.0], "c": ["never-seen", None], "d": ["u", "zzz"]}
    )
    return pl.concat([profile_rows, unseen], how="diagonal_relaxed")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_gradient_boosting_compiles_and_matches_scikit_learn(tmp_path: Path, task: str) -> None:
    predictor = package(tmp_path, task=task)
    encoder = predictor.pipeline.named_steps["prepare"].named_transformers_["cat"]
    assert encoder.infrequent_categories_[0] is not None  # the grouping is exercised
    verdict = inference.compile_pipeline(predictor, [rows(predictor)])
    assert verdict.compiled is not None, verdict.reason
    assert verdict.rows > 1000 and verdict.max_difference <= inference.TOLERANCE
    want_labels, want = predictor.predict_features(rows(predictor))
    got_labels, got = verdict.compiled.predict_features(rows(predictor))
    if want is None:
        np.testing.assert_allclose(got_labels, want_labels, rtol=1e-9, atol=1e-9)
    else:
        assert list(got_labels) == list(want_labels)
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_a_compiled_path_is_kept_and_reloaded_without_scikit_learn(tmp_path: Path) -> None:
    predictor = package(tmp_path)
    verdict = inference.precompile(predictor._folder, tmp_path / "compiled")
    assert verdict.compiled is not None
    again = inference.load(tmp_path / "compiled")
    assert again is not None and again.compiled is not None
    assert again.rows == verdict.rows and again.reason == verdict.reason
    data = rows(predictor)
    a_labels, a = verdict.compiled.predict_features(data)
    b_labels, b = again.compiled.predict_features(data)
    assert list(a_labels) == list(b_labels) and np.array_equal(a, b)
    inference.save(tmp_path / "compiled", verdict)  # a second save leaves the first in place
    assert inference.load(tmp_path / "missing") is None


def test_other_estimators_and_disagreements_are_refused(tmp_path: Path) -> None:
    logistic = package(tmp_path / "a", estimator="logistic_regression")
    verdict = inference.compile_pipeline(logistic, [rows(logistic)])
    assert verdict.compiled is None and "no compiled path for logistic_regression" in verdict.reason

    predictor = package(tmp_path / "b")
    verdict = inference.compile_pipeline(predictor, [rows(predictor)])
    assert verdict.compiled is not None
    # A compiled path that codes one category wrongly must be caught by the verification.
    layout = [dict(item) for item in verdict.compiled.layout]
    cat = next(i for i in layout if i["column"] == "d")
    cat["codes"] = list(reversed(cat["codes"]))
    broken = inference.CompiledPipeline(layout, verdict.compiled.forest, predictor.classes, 1)
    refused = inference.verify(broken, predictor, [rows(predictor)])
    assert refused.compiled is None and "differ" in refused.reason
    assert inference.verify(verdict.compiled, predictor, [pl.DataFrame()]).compiled is None
