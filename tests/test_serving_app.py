"""/predict and friends, served by a real ``driftloop serve`` process (uvicorn)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.models.mlflow_registry import load_predictor
from driftloop.models.registry import CHAMPION, open_registry

from .serving_helpers import Running, record, serving, stop, synthetic_project

# the tests share the module's trained project and server: one worker builds them
pytestmark = pytest.mark.xdist_group("serving_app")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_project(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Running]:
    with serving(project) as running:
        yield running


@pytest.fixture
def client(server: Running) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def champion(project: Path) -> str:
    version = open_registry(load_spec(project), Layout(project)).alias(CHAMPION)
    assert version is not None
    return version


def test_one_record_and_a_list(client: httpx.Client, project: Path) -> None:
    # the server issues the id, unguessable; a client's X-Request-ID is not taken (a label
    # could otherwise name an id nobody was answered with)
    one = client.post("/predict", json=record(), headers={"X-Request-ID": "abc-1"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["request_id"] != "abc-1" and one.headers["x-request-id"] == body["request_id"]
    assert body["model"] == {"name": "synth", "version": champion(project)}
    [pred] = body["predictions"]
    assert pred["prediction"] in ("no", "yes")
    assert set(pred["probabilities"]) == {"no", "yes"}
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0)
    assert pred["prediction"] == max(pred["probabilities"], key=pred["probabilities"].get)
    many = client.post("/predict", json=[record(x1=v) for v in (-2.0, 0.0, 2.0)])
    assert many.status_code == 200
    assert len(many.json()["predictions"]) == 3
    assert many.json()["request_id"].split(".")[1] == "3"  # <random>.<records>.<mac>


def test_http_predictions_equal_the_registered_models(client: httpx.Client, project: Path) -> None:
    """The served path (contract check, features, compiled trees) gives what the registered
    model gives through scikit-learn, to 1e-6."""
    spec, layout = load_spec(project), Layout(project)
    rng = np.random.default_rng(7)
    records = [
        record(
            x1=round(float(rng.normal()), 4),
            x2=round(float(rng.normal()), 4),
            c=str(rng.choice(["a", "b", "c"])),
            t=f"2024-01-{1 + i % 20:02d} {i % 24:02d}:15:00",
        )
        for i in range(300)
    ]
    records[5]["x2"] = None  # missing values too
    served = client.post("/predict", json=records).json()
    predictor = load_predictor(open_registry(spec, layout), f"models:/synth/{champion(project)}")
    expected = predictor.predict(records)
    got = served["predictions"]
    assert [p["prediction"] for p in got] == expected["prediction"].to_list()
    for cls in ("no", "yes"):
        want = expected[f"proba_{cls}"].to_numpy()
        have = np.array([p["probabilities"][cls] for p in got])
        assert np.max(np.abs(want - have)) <= 1e-6


def test_contract_breaks_are_422_naming_field_and_rule(client: httpx.Client) -> None:
    cases = {
        "wrong type": ({**record(), "x1": "high"}, ["body", "x1"], "dtype(float)"),
        "missing required": ({"x1": 1.0}, ["body", "t"], "not_nullable"),
        "bad date": (
            {**record(), "t": "05/01/2024"},
            ["body", "t"],
            "dtype(datetime, %Y-%m-%d %H:%M:%S)",
        ),
        "unknown field": ({**record(), "x3": 1}, ["body", "x3"], "extra_forbidden"),
        "the target": ({**record(), "y": "yes"}, ["body", "y"], "extra_forbidden"),
    }
    for name, (body, loc, rule) in cases.items():
        response = client.post("/predict", json=body)
        assert response.status_code == 422, (name, response.text)
        detail = response.json()["detail"]
        assert [loc, rule] in [[d["loc"], d["type"]] for d in detail], (name, detail)
        assert all(d["msg"] for d in detail)
    listed = client.post("/predict", json=[record(), {**record(), "x1": "high"}])
    assert listed.status_code == 422
    assert listed.json()["detail"][0]["loc"] == ["body", 1, "x1"]


def test_malformed_and_oversized_bodies(client: httpx.Client, project: Path) -> None:
    bad = client.post(
        "/predict", content=b'{"x1": 1,', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "json_invalid"
    limit = load_spec(project).serving.max_body_bytes
    huge = json.dumps({**record(), "c": "a" * (limit + 10)}).encode()
    assert client.post("/predict", content=huge).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts what it reads
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    streamed = client.post("/predict", content=chunks())
    assert streamed.status_code == 413
    too_many = client.post(
        "/predict", json=[record()] * (load_spec(project).serving.max_records + 1)
    )
    assert too_many.status_code == 413 and "max_records" in too_many.json()["detail"]


def test_health_ready_model_and_metrics(client: httpx.Client, project: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True
    assert ready["model"] == {"name": "synth", "version": champion(project)}
    deadline = time.monotonic() + 300  # a hang guard, not a speed claim
    while ready["registry_checked_at"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = client.get("/ready").json()
    assert ready["registry_checked_at"] > 0
    info = client.get("/model").json()
    assert info["version"] == champion(project)
    assert info["metrics"]["holdout_roc_auc"] > 0.5
    assert [b["batch_id"] for b in info["lineage"]["batches"]]  # training data lineage
    assert info["promotion"]["decision"] == "promoted" and info["promotion"]["reason"]
    assert info["inference"]["engine"] == "treelite"
    assert info["inference"]["verified_rows"] > 0 and info["inference"]["max_difference"] <= 1e-6
    assert sorted(info["inputs"]) == ["c", "t", "x1", "x2"]
    client.post("/predict", json=record())
    client.post("/predict", json={"nope": 1})
    text = client.get("/metrics").text
    assert 'driftloop_requests_total{endpoint="/predict",status="200"}' in text
    assert 'driftloop_request_errors_total{endpoint="/predict",kind="validation"}' in text
    assert "driftloop_request_seconds_bucket" in text
    assert "driftloop_predictions_total{label=" in text
    assert "driftloop_model_version" in text
    assert "driftloop_positive_probability_bucket" in text


def test_feedback_is_checked_and_logged(client: httpx.Client, project: Path) -> None:
    rid = client.post("/predict", json=record()).json()["request_id"]
    ok = client.post("/feedback", json={"request_id": rid, "label": "yes"})
    assert ok.status_code == 202 and ok.json() == {"accepted": 1}
    assert (
        client.post("/feedback", json=[{"request_id": rid, "record": 0, "label": "no"}]).status_code
        == 202
    )
    too_far = {"request_id": rid, "record": 3_000_000_000, "label": "no"}
    huge = client.post("/feedback", json=too_far)  # an index no request has: 422, not a 500
    assert huge.status_code == 422 and huge.json()["detail"][0]["loc"] == ["body", "record"]
    bad = client.post("/feedback", json={"request_id": rid, "label": "maybe"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["type"] == "isin(['no', 'yes'])"
    assert bad.json()["detail"][0]["loc"] == ["body", "label"]
    missing = client.post("/feedback", json={"label": "yes"})  # no request id
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "request_id"]
    raw = client.post(
        "/feedback",
        content=json.dumps([{"request_id": rid, "label": 3}]),
        headers={"Content-Type": "application/json"},
    )
    assert raw.status_code == 422 and raw.json()["detail"][0]["loc"] == ["body", 0, "label"]
    folder = Layout(project).feedback
    deadline = time.monotonic() + 300  # a hang guard: the log is flushed in the background
    while time.monotonic() < deadline:
        files = list(folder.glob("date=*/part-*.parquet"))
        frame = pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()
        if frame.height and frame["__request_id"].to_list().count(rid) >= 2:
            break  # both labels written (they may land in two parts)
        time.sleep(0.1)
    mine = frame.filter(pl.col("__request_id") == rid)
    assert sorted(mine["__label"].to_list()) == ["no", "yes"]
    assert mine.schema["__ts"] == pl.Datetime("us", "UTC")


def test_openapi_documents_the_contract(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    record_schema = body["anyOf"][0]
    assert record_schema["required"] == ["t"]
    assert record_schema["properties"]["c"]["anyOf"][0]["type"] == "string"
    assert "422" in doc["paths"]["/predict"]["post"]["responses"]
    assert "/feedback" in doc["paths"] and "/metrics" in doc["paths"]
    feedback = doc["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    assert feedback["schema"]["anyOf"][0]["required"] == ["request_id", "label"]
    assert "$ref" not in json.dumps(feedback)  # inline: nothing dangling


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "t": st.text(max_size=25) | st.just("2024-01-02 03:04:05") | st.integers(),
        "x1": st.floats(allow_nan=False) | st.integers() | st.text(max_size=5) | st.none(),
        "x2": st.floats(allow_nan=False) | st.none() | st.booleans(),
        "c": st.sampled_from(["a", "b", "zz", "", " a "]) | st.integers() | st.none(),
        "extra": JSON,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=JSON | FIELDS | st.lists(FIELDS, min_size=1, max_size=4))
def test_bad_input_never_gives_a_500(client: httpx.Client, body: Any) -> None:
    response = client.post("/predict", content=json.dumps(body).encode())
    assert response.status_code in (200, 413, 422), response.text
    if response.status_code == 422:
        assert response.json()["detail"]


def test_graceful_shutdown_writes_the_prediction_log(tmp_path: Path, project: Path) -> None:
    """Records still in the buffer at SIGTERM are written before the process exits."""
    layout = Layout(project)
    spec_file = project / "driftloop.yaml"
    original = spec_file.read_text()
    # A second server on the same project, whose log would only flush after a minute.
    spec_file.write_text(original.replace("flush_seconds: 0.3", "flush_seconds: 60"))
    try:
        with serving(project) as running, running.client() as c:
            ids = [
                c.post("/predict", json=[record(), record(x1=1.0)]).json()["request_id"]
                for _ in range(20)
            ]
            time.sleep(0.5)
            unflushed = [pl.read_parquet(f) for f in layout.predictions.glob("date=*/*.parquet")]
            before = pl.concat(unflushed, how="diagonal_relaxed") if unflushed else None
            assert before is None or before.filter(pl.col("__request_id").is_in(ids)).height == 0
            # uvicorn shuts down gracefully, then re-raises SIGTERM (the conventional exit)
            assert stop(running) in (0, -signal.SIGTERM)
    finally:
        spec_file.write_text(original)
    frames = [pl.read_parquet(f) for f in layout.predictions.glob("date=*/part-*.parquet")]
    logged = pl.concat(frames, how="diagonal_relaxed")
    mine = logged.filter(pl.col("__request_id").is_in(ids))
    assert mine.height == 40
    assert set(mine["__record"].to_list()) == {0, 1}
    assert mine.schema["x1"] == pl.Float64 and mine.schema["t"] == pl.Datetime("us")
    assert mine.schema["__ts"] == pl.Datetime("us", "UTC")
    expected = {"__model_name", "__model_version", "__prediction", "__proba_no", "__proba_yes"}
    assert expected | {"__flags"} <= set(mine.columns)
    assert mine["__model_version"].unique().to_list() == [champion(project)]
