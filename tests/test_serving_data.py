"""Feature and prediction parity on real data: what /predict computes for a record is what the
batch pipeline computed for the same row.

For each dataset the project is trained with the real pipeline; then every processed row is
sent to a running server as the JSON record a client would send (the contract's raw columns).
The per-request features (the server's own contract check and feature code, run here on the
same records) equal the features stage's output, and the predictions that come back over
HTTP equal the registered model's scikit-learn predictions on the batch features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.features.stage import read_features
from driftloop.models.mlflow_registry import load_predictor
from driftloop.models.registry import open_registry
from driftloop.serving.model import ServedModel
from driftloop.serving.records import RequestContract, request_records
from driftloop.serving.rowpath import ROW_LIMIT

from .serving_helpers import SERVING, serving
from .test_lifecycle_data import CASES, train_fresh

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.mark.parametrize("name", ["bike", "telco"])
def test_per_request_features_and_http_predictions_equal_the_batch(
    name: str, datasets: Path, tmp_path: Path
) -> None:
    project = tmp_path / name
    case = CASES[name]
    trained = train_fresh(project, datasets, name)
    (project / "driftloop.yaml").write_text(case.spec + SERVING)
    spec, layout = load_spec(project), Layout(project)
    [batch] = [b["batch_id"] for b in trained.manifest["inputs"]]
    processed = pl.read_parquet(layout.processed / batch / "data.parquet")
    batch_features = read_features(layout, batch).collect()
    version = trained.manifest["version"]
    predictor = load_predictor(open_registry(spec, layout), f"models:/{spec.name}/{version}")
    records = request_records(processed, spec)

    # Features: the server's per-request path on every record == the features stage.
    contract = RequestContract.from_spec(predictor.spec)
    texts = contract.records(records)
    checked = contract.check(texts, predictor.user_function)
    assert checked.problems == {}
    model_columns = [
        c for c in batch_features.columns if not c.startswith("__") and c != spec.target
    ]
    assert_frame_equal(checked.features.select(model_columns), batch_features.select(model_columns))

    # The row path (micro-batches of up to ROW_LIMIT records): what it takes, it scores as
    # the Polars path does, and these real records it takes (the rest go to Polars).
    served = ServedModel.load(spec.name, str(version), predictor._folder, unknown_category="reject")
    assert served.rows is not None, served.info["inference"]["row_path"]
    taken = 0
    for start in range(0, len(texts), 25 * ROW_LIMIT):  # about 1 batch in 25, for time
        part = texts[start : start + ROW_LIMIT]
        fast, slow = served.score(part), served.score_frames(part)
        if fast.checked.features is not None:
            continue  # declined: score() took the Polars path itself
        taken += 1
        assert slow.checked.problems == {} and slow.checked.flags == {}
        assert fast.checked.typed.to_dicts() == slow.checked.typed.to_dicts()
        if slow.proba is None:
            np.testing.assert_allclose(fast.labels, slow.labels, rtol=1e-12)
        else:
            assert list(fast.labels) == list(slow.labels)
            np.testing.assert_allclose(fast.proba, slow.proba, rtol=0, atol=1e-12)
    assert taken >= len(range(0, len(texts), 25 * ROW_LIMIT)) // 2

    # Predictions: over HTTP, in requests of 500 records, == scikit-learn on the batch features.
    labels, proba = predictor.predict_features(batch_features)
    with serving(project) as running, running.client() as client:
        answers = []
        for start in range(0, len(records), 500):
            response = client.post("/predict", json=records[start : start + 500])
            assert response.status_code == 200, response.text[:500]
            body = response.json()
            assert body["model"]["version"] == version
            answers += body["predictions"]
        info = client.get("/model").json()
    assert len(answers) == processed.height
    if proba is None:  # regression
        got = np.array([a["prediction"] for a in answers])
        assert np.max(np.abs(got - labels) / np.maximum(1.0, np.abs(labels))) <= 1e-6
    else:
        assert [a["prediction"] for a in answers] == [str(v) for v in labels]
        for k, cls in enumerate(predictor.classes):
            got = np.array([a["probabilities"][cls] for a in answers])
            assert np.max(np.abs(got - proba[:, k])) <= 1e-6
    assert info["inference"]["engine"] == "treelite"
