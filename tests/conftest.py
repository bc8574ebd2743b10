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


@pytest.hookimpl(trylast=True)  # after xdist's own hook, which names the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first, and the ``xdist_group`` marks honoured.

    ``make test``'s two workers take the tests in this order (a group as a whole): a long
    test taken last keeps one worker busy while the other has nothing left to do; taken
    first, the short ones fill in around it. Stable: otherwise the order is the collection's.

    ``--dist loadgroup`` keeps a group on one worker by the ``@group`` suffix xdist (3.8)
    puts on each test's node id; since pytest 9.2 keeps node ids structured, that assignment
    is lost and every group is silently spread like ungrouped tests (pytest-xdist issue
    1386). Here the suffix is put where pytest 9.2 keeps the id; where xdist has put it
    (an older pytest, or a fixed xdist) nothing is done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if not names or "@" in item.nodeid:
            continue
        from _pytest.nodeid import NodeId  # pytest >= 9.2, where the suffix was lost

        grouped = f"{item.nodeid}@{'_'.join(sorted(names))}"
        item._id = NodeId.parse(grouped)
        if item.nodeid != grouped:
            raise pytest.UsageError(
                f"{item.nodeid}: could not mark it for its xdist group {grouped!r}; this "
                "pytest keeps node ids differently: update tests/conftest.py"
            )


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
