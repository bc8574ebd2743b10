"""API tokens, and /feedback that cannot be poisoned (issue 12, section 1).

The app runs in process (``TestClient``); with its lifespan where a model must answer, on a
small trained project. Tokens come from the environment or a dependency override.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from driftloop.core.layout import Layout
from driftloop.monitoring.predlog import read_feedback
from driftloop.serving.app import create_app
from driftloop.serving.auth import (
    TOKENS_ENV,
    TOKENS_FILE_ENV,
    TokenConfigError,
    Tokens,
    check_binding,
    configured_tokens,
    load_tokens,
)
from driftloop.serving.ratelimit import RateLimiter
from driftloop.serving.request_ids import RequestIds, read_or_create_key

from .helpers import write_spec
from .serving_helpers import SERVING, record, synthetic_project
from .test_lifecycle import SPEC

# the tests share the module's trained project: one worker builds it
pytestmark = pytest.mark.xdist_group("serving_auth")

PREDICT = "predict-token-0123456789abcdef"
FEEDBACK = "feedback-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef0123"
METRICS = "metrics-token-0123456789abcdef"
LIMITED = "limited-token-0123456789abcdef"
TOKENS = f"{PREDICT}:predict+feedback,{FEEDBACK}:feedback,{ADMIN}:admin,{METRICS}:metrics"
JSON = {"Content-Type": "application/json"}
BURST = 20  # labels one token may send (the bucket refills too slowly to matter here)
LIMITS = SERVING + f"  feedback_limit: {{labels_per_second: 0.001, burst: {BURST}}}\n"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- token configuration ---------------------------------------------------------------


def test_tokens_from_the_environment_and_a_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text(f"# ops\n{ADMIN}:admin\n\n{METRICS}:metrics  # prometheus\n")
    tokens = load_tokens({TOKENS_ENV: f"{PREDICT}:predict+feedback", TOKENS_FILE_ENV: str(file)})
    assert [sorted(t.scopes) for t in tokens.tokens] == [
        ["feedback", "predict"],
        ["admin"],
        ["metrics"],
    ]
    found = tokens.find(METRICS)
    assert found is not None and found.allows("metrics") and not found.allows("predict")
    admin = tokens.find(ADMIN)
    assert admin is not None and all(admin.allows(s) for s in ("predict", "feedback", "metrics"))
    assert tokens.find(METRICS[:-1]) is None and tokens.find("") is None
    assert not load_tokens({}).enabled


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (f"{PREDICT}:predcit", r"entry 1: unknown scope 'predcit'; did you mean 'predict'"),
        (f"{PREDICT}", r"entry 1: expected <token>:<scopes>"),
        (f"{ADMIN}:admin,short:admin", r"entry 2: the token is 5 characters; tokens need at"),
    ],
)
def test_a_bad_token_entry_is_named_without_showing_the_token(entry: str, message: str) -> None:
    with pytest.raises(TokenConfigError, match=message) as caught:
        load_tokens({TOKENS_ENV: entry})
    assert PREDICT not in str(caught.value) and "short" not in str(caught.value)
    assert TOKENS_ENV in str(caught.value)


def test_a_token_file_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match=r"missing.*cannot be read"):
        load_tokens({TOKENS_FILE_ENV: str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(TokenConfigError, match=r"empty, which holds no token"):
        load_tokens({TOKENS_FILE_ENV: str(tmp_path / "empty")})


def test_an_open_api_is_refused_off_loopback() -> None:
    check_binding("127.0.0.1", Tokens())
    check_binding("0.0.0.0", load_tokens({TOKENS_ENV: f"{ADMIN}:admin"}))
    with pytest.raises(TokenConfigError, match=r"refusing to serve on 0\.0\.0\.0 without API"):
        check_binding("0.0.0.0", Tokens())


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    env = {k: v for k, v in os.environ.items() if k not in (TOKENS_ENV, TOKENS_FILE_ENV)}
    out = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "serve", "-p", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert out.returncode != 0
    assert "refusing to serve on 0.0.0.0 without API tokens" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


# ---- the app's routes (no model needed: a refused request never reaches one) -----------


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("untrained"), SPEC).parent


def test_every_endpoint_but_health_needs_a_token(
    untrained: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(TOKENS_ENV, TOKENS)
    caplog.set_level(logging.DEBUG)
    # no lifespan: nothing is loaded, so a request let through fails in the route (a 500)
    client = TestClient(create_app(untrained), raise_server_exceptions=False)
    assert client.get("/health").json() == {"status": "ok"}
    for method, path in [
        ("POST", "/predict"),
        ("POST", "/feedback"),
        ("GET", "/ready"),
        ("GET", "/model"),
        ("GET", "/metrics"),
    ]:
        missing = client.request(method, path)
        assert missing.status_code == 401, (path, missing.text)
        assert "Authorization: Bearer <token>" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.request(method, path, headers=bearer(PREDICT + "x"))
        assert wrong.status_code == 401
        assert "not one of the server's API tokens" in wrong.json()["detail"]
        basic = client.request(method, path, headers={"Authorization": f"Basic {ADMIN}"})
        assert basic.status_code == 401
    forbidden = client.get("/metrics", headers=bearer(FEEDBACK))
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"].startswith("this token's scopes (feedback) do not include")
    assert client.post("/predict", headers=bearer(METRICS)).status_code == 403
    assert client.post("/feedback", headers=bearer(METRICS)).status_code == 403
    assert client.get("/metrics", headers=bearer(METRICS)).status_code != 401  # let through
    assert all(t not in caplog.text for t in (PREDICT, FEEDBACK, ADMIN, METRICS))


def test_tokens_can_be_given_by_dependency_override(untrained: Path) -> None:
    app = create_app(untrained, tokens=Tokens())
    client = TestClient(app, raise_server_exceptions=False)
    # open: the dependency lets the request through to the route (which, with no lifespan
    # run, has no server to answer with)
    assert client.post("/feedback", headers=JSON).status_code == 500
    app.dependency_overrides[configured_tokens] = lambda: load_tokens({TOKENS_ENV: TOKENS})
    assert client.post("/feedback", headers=JSON).status_code == 401


def test_openapi_shows_the_bearer_scheme(untrained: Path) -> None:
    doc = TestClient(create_app(untrained, tokens=Tokens())).get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ("/predict", "/feedback", "/ready", "/model", "/metrics"):
        [operation] = doc["paths"][path].values()
        assert operation["security"] == [{"HTTPBearer": []}], path
        assert {"401", "403"} <= set(operation["responses"]), path
    assert "security" not in doc["paths"]["/health"]["get"]


# ---- request ids and the rate limit, as units -------------------------------------------


def test_request_ids_are_unguessable_and_checked(tmp_path: Path) -> None:
    key = read_or_create_key(tmp_path / "serving.key")
    assert read_or_create_key(tmp_path / "serving.key") == key  # every worker reads the same
    assert (tmp_path / "serving.key").stat().st_mode & 0o077 == 0
    ids = RequestIds(key)
    first, second = ids.issue(3), ids.issue(3)
    assert ids.records(first) == 3 and ids.records(second) == 3
    body, _, mac = first.rpartition(".")
    shared = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), 0)
    assert shared < 8  # no per-worker prefix and counter: 128 random bits each
    assert ids.records(f"{body[:-1]}9.{mac}") is None  # another record count
    assert ids.records(f"{body}.{'0' * len(mac)}") is None
    assert RequestIds(b"another key" * 4).records(first) is None
    for junk in ("", "abc", "a.b.c", "..", "x.3."):
        assert ids.records(junk) is None


def test_the_rate_limit_is_a_token_bucket_per_caller() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=10, clock=lambda: now[0])
    assert limiter.take("a", 10) == 0.0
    assert limiter.take("a", 1) == pytest.approx(0.5)  # empty: one label in half a second
    assert limiter.take("b", 10) == 0.0  # another caller has its own bucket
    now[0] = 1.0
    assert limiter.take("a", 2) == 0.0  # refilled two
    assert limiter.take("a", 1) > 0
    now[0] = 100.0
    assert limiter.take("a", 10) == 0.0  # never more than the burst
    assert limiter.take("a", 1) > 0


# ---- a served model: predict, and feedback that cannot be poisoned ----------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_project(tmp_path_factory.mktemp("auth"), versions=1, extra=LIMITS)


@pytest.fixture
def client(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv(TOKENS_ENV, f"{TOKENS},{LIMITED}:feedback")
    with TestClient(create_app(project)) as c:  # the lifespan loads the champion
        yield c


def predicted(client: TestClient, records: int = 1) -> str:
    answer = client.post("/predict", json=[record()] * records, headers=bearer(PREDICT))
    assert answer.status_code == 200, answer.text
    rid: str = answer.json()["request_id"]
    return rid


def labels(project: Path) -> dict[tuple[str, int], str]:
    frame = read_feedback(project)
    return {(r, k): v for r, k, v in frame.select("__request_id", "__record", "__label").rows()}


def test_a_token_with_the_scope_gets_an_answer(client: TestClient) -> None:
    answer = client.post("/predict", json=record(), headers=bearer(PREDICT))
    assert answer.status_code == 200, answer.text
    assert client.post("/predict", json=record(), headers=bearer(ADMIN)).status_code == 200
    assert client.get("/ready", headers=bearer(METRICS)).json()["ready"] is True
    assert client.get("/model", headers=bearer(FEEDBACK)).status_code == 200
    assert client.get("/metrics", headers=bearer(METRICS)).status_code == 200


def test_feedback_needs_json(client: TestClient) -> None:
    rid = predicted(client)
    body = f'{{"request_id": "{rid}", "label": "yes"}}'
    for headers in (
        {"Content-Type": "text/plain"},
        {},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ):
        refused = client.post("/feedback", content=body, headers={**bearer(FEEDBACK), **headers})
        assert refused.status_code == 415, refused.text
        assert "Content-Type: application/json" in refused.json()["detail"]
    ok = client.post(
        "/feedback",
        content=body,
        headers={**bearer(FEEDBACK), "Content-Type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 202


def test_feedback_for_an_unknown_request_is_refused(client: TestClient) -> None:
    rid = predicted(client, records=2)
    body, _, mac = rid.rpartition(".")
    for forged in ("abc-1", f"{body}.{mac[::-1]}", rid.replace(".2.", ".5.")):
        refused = client.post(
            "/feedback", json={"request_id": forged, "label": "yes"}, headers=bearer(FEEDBACK)
        )
        assert refused.status_code == 422, refused.text
        [problem] = refused.json()["detail"]
        assert problem["loc"] == ["body", "request_id"] and problem["input"] == forged
        assert problem["type"] == "unknown_request_id"
        assert "send the request_id that /predict answered" in problem["msg"]
    too_far = client.post(
        "/feedback",
        json=[{"request_id": rid, "record": 2, "label": "no"}],
        headers=bearer(FEEDBACK),
    )
    assert too_far.status_code == 422
    assert too_far.json()["detail"][0]["loc"] == ["body", 0, "record"]
    assert "held 2 record(s), so record is 0 to 1" in too_far.json()["detail"][0]["msg"]


def test_the_first_label_stays_unless_an_admin_corrects_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKENS_ENV, TOKENS)
    with TestClient(create_app(project)) as client:
        rid, other = predicted(client), predicted(client)
        sent(client, rid, other)
    # the lifespan's shutdown wrote the feedback log
    got = labels(project)
    assert got[(rid, 0)] == "yes"
    assert got[(other, 0)] == "no"
    raw = pl.concat(pl.read_parquet(f) for f in Layout(project).feedback.rglob("part-*.parquet"))
    fix = raw.filter(pl.col("__correction"))
    assert fix.select("__request_id", "__label").rows() == [(other, "no")]
    admin = load_tokens({TOKENS_ENV: TOKENS}).find(ADMIN)
    assert admin is not None and fix["__by"].to_list() == [admin.fingerprint]
    assert ADMIN not in str(raw.rows())


def sent(client: TestClient, rid: str, other: str) -> None:
    """A first label, a second one (logged, ignored), a refused and an admitted correction."""

    def send(token: str, label: str, *, rid: str = rid, correction: bool = False) -> int:
        item = {"request_id": rid, "label": label, "correction": correction}
        return client.post("/feedback", json=item, headers=bearer(token)).status_code

    assert send(FEEDBACK, "yes") == 202
    assert send(FEEDBACK, "no") == 202  # logged, but the first label stays
    assert send(FEEDBACK, "no", rid=other) == 202
    forbidden = client.post(
        "/feedback",
        json={"request_id": rid, "label": "no", "correction": True},
        headers=bearer(FEEDBACK),
    )
    assert forbidden.status_code == 403 and "'admin' scope" in forbidden.json()["detail"]
    assert send(ADMIN, "no", rid=other, correction=True) == 202


def test_feedback_is_rate_limited_per_token(client: TestClient) -> None:
    rid = predicted(client, records=BURST)
    items = [{"request_id": rid, "record": i, "label": "yes"} for i in range(BURST)]
    over = client.post("/feedback", json=[*items, items[0]], headers=bearer(LIMITED))
    assert over.status_code == 413 and "split the request" in over.json()["detail"]
    assert client.post("/feedback", json=items, headers=bearer(LIMITED)).status_code == 202
    limited = client.post("/feedback", json=items[:1], headers=bearer(LIMITED))
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert "serving.feedback_limit allows" in limited.json()["detail"]
    # another token has its own budget
    assert client.post("/feedback", json=items[:1], headers=bearer(ADMIN)).status_code == 202


def test_an_open_api_limits_labels_by_address(project: Path) -> None:
    with TestClient(create_app(project, tokens=Tokens())) as client:
        rid = predicted(client, records=BURST)
        fix = {"request_id": rid, "label": "no", "correction": True}
        assert client.post("/feedback", json=fix).status_code == 202  # open: no admin to ask
        items = [{"request_id": rid, "record": i, "label": "yes"} for i in range(BURST - 1)]
        assert client.post("/feedback", json=items).status_code == 202
        limited = client.post("/feedback", json=items[:1])
        assert limited.status_code == 429 and "retry-after" in limited.headers
