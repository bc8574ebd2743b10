"""The task's metrics on integer codes are scikit-learn's on the labels themselves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml

from driftloop.core.spec import parse_spec
from driftloop.models.metrics import score

SPEC = """
name: metrics
task: classification
target: y
sources: [{name: s, path: data/raw/s/*.csv}]
contract: {columns: {x: {dtype: float}, y: {dtype: str}}}
"""


def on_labels(y_true: Any, y_pred: Any, proba: Any, classes: list[str]) -> dict[str, float]:
    """Each metric as scikit-learn computes it from the labels (object arrays)."""
    from sklearn import metrics as m

    seen = sorted({str(v) for v in y_true.tolist()} | set(classes))
    binary = len(seen) == 2
    out = {
        "accuracy": float(m.accuracy_score(y_true, y_pred)),
        "f1": float(
            m.f1_score(
                y_true,
                y_pred,
                average="binary" if binary else "macro",
                pos_label=seen[-1] if binary else 1,
                zero_division=0,
            )
        ),
    }
    if len(set(y_true.tolist())) < 2:
        return out
    if len(classes) == 2:
        out["roc_auc"] = float(m.roc_auc_score(y_true == classes[1], proba[:, 1]))
        out["average_precision"] = float(
            m.average_precision_score(y_true == classes[1], proba[:, 1])
        )
    elif set(y_true.tolist()) <= set(classes):
        out["roc_auc"] = float(m.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes))
    if set(y_true.tolist()) <= set(classes):
        out["log_loss"] = float(m.log_loss(y_true, proba, labels=classes))
    return out


@pytest.mark.parametrize(
    ("classes", "true_from", "pred_from"),
    [
        (["no", "yes"], ["no", "yes"], ["no", "yes"]),
        (["DOWN", "UP"], ["DOWN", "UP"], ["UP"]),  # one class predicted only
        (["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]),
        (["a", "b", "c", "d"], ["a", "b", "c"], ["a", "b", "d"]),  # a class never true
        (["a", "b"], ["a", "b", "z"], ["a", "b"]),  # a label the model never saw
        (["0", "1", "10", "2"], ["0", "1", "10", "2"], ["1", "10"]),  # text order, not numeric
    ],
)
def test_metrics_on_codes_equal_scikit_learns_on_labels(
    classes: list[str], true_from: list[str], pred_from: list[str]
) -> None:
    spec = parse_spec(yaml.safe_load(SPEC))
    rng = np.random.default_rng(len(classes) * 7 + len(true_from))
    n = 3000
    y_true = rng.choice(true_from, n).astype(object)
    y_pred = rng.choice(pred_from, n).astype(object)
    proba = rng.random((n, len(classes)))
    proba /= proba.sum(axis=1, keepdims=True)
    found = score(spec, y_true, y_pred, proba, classes)
    expected = on_labels(y_true, y_pred, proba, classes)
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        same = math.isnan(value) and math.isnan(found[name])  # a class never true: no AUC
        assert same or math.isclose(found[name], value, rel_tol=1e-12, abs_tol=1e-12), name


def test_metrics_without_probabilities_or_with_one_class_present() -> None:
    spec = parse_spec(yaml.safe_load(SPEC))
    y = np.array(["yes"] * 10, dtype=object)
    pred = np.array(["yes"] * 7 + ["no"] * 3, dtype=object)
    assert score(spec, y, pred) == on_labels(y, pred, None, [])
    proba = np.tile([0.2, 0.8], (10, 1))
    found = score(spec, y, pred, proba, ["no", "yes"])
    assert found == on_labels(y, pred, proba, ["no", "yes"])
    assert set(found) == {"accuracy", "f1"}
