"""Shared fixtures. Tests that need ../shared/datasets skip with a reason where it is absent
(an outside contributor's clone); with DRIFTLOOP_REQUIRE_SHARED=1 (set by .ci/run) its
absence is an error instead, so CI never skips them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRIFTLOOP_SHARED_DATA", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("DRIFTLOOP_REQUIRE_SHARED") == "1":
            pytest.fail(
                f"{SHARED} is missing and DRIFTLOOP_REQUIRE_SHARED=1; CI needs the datasets"
            )
        pytest.skip(f"{SHARED} not found: the shared third-party datasets are not in this clone")
    return SHARED


pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.moto",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.prefect_server",
    "tests.fixtures.buildah",
]


@pytest.fixture(autouse=True)
def _no_state_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's DRIFTLOOP_STATE_URL must not send the tests' state elsewhere."""
    monkeypatch.delenv("DRIFTLOOP_STATE_URL", raising=False)


_STRAYS = ("mlflow.db", "mlruns")  # MLflow's defaults when nothing names a store


@pytest.fixture(autouse=True)
def _no_stray_mlflow_store() -> object:
    """No test (and no driftloop code) may fall back to MLflow's default store in the
    working directory: every store driftloop uses is named by the spec or the test."""
    before = {name for name in _STRAYS if (Path.cwd() / name).exists()}
    yield
    made = {name for name in _STRAYS if (Path.cwd() / name).exists()} - before
    if made:
        pytest.fail(
            f"{', '.join(sorted(made))} appeared in {Path.cwd()}: something used MLflow's "
            "default store instead of the one the spec or the test names"
        )
