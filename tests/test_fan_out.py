"""The pieces a stage fans out (drift tests per column, the reference profile's columns)
give the same result on an executor as in one process (floats to 1e-12 relative: a float sum
may run in another order): on threads here, and on a real Dask
LocalCluster of worker processes (``make test-prefect``, where Dask is installed)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import pytest

from driftloop.core import executor
from driftloop.core.spec import EngineSpec, MonitoringSpec
from driftloop.models.profile import reference_profile
from driftloop.monitoring.drift import data_drift
from driftloop.monitoring.reference import Reference

from .fixtures.prefect_server import require_prefect


def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(11)

    def frame(rows: int, shift: float) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "amount": rng.lognormal(shift, 1.0, rows),
                "x": rng.normal(shift, 1.0, rows),
                "steady": rng.normal(0.0, 1.0, rows),
                "city": rng.choice(["Lyon", "Oslo", "Lima"], rows, p=[0.5, 0.3, 0.2]),
                "member": rng.random(rows) < 0.4,
            }
        )

    return frame(3_000, 0.0), frame(2_000, 0.4)


def drift_of(reference: pl.DataFrame, current: pl.DataFrame, pool: Any) -> dict[str, Any]:
    settings = MonitoringSpec(permutations=99)
    ref = Reference.from_frame(reference)
    importance = {"amount": 3.0, "x": 2.0, "steady": 1.0, "city": 1.0, "member": 0.5}
    return data_drift(
        ref, current, settings, importance=importance, seed=5, executor=pool
    ).to_dict()


def profile_of(frame: pl.DataFrame, pool: Any) -> dict[str, Any]:
    return reference_profile(
        frame,
        holdout_predictions=pl.Series([0.2, 0.7, 0.4]),
        holdout_metric={"roc_auc": 0.81},
        seed=3,
        executor=pool,
    )


def same(a: Any, b: Any, where: str = "") -> bool:
    """Equal, floats to 1e-12 relative (the order of a float sum is not fixed)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        return all(same(a[k], b[k], f"{where}.{k}") for k in a)
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        return all(same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12) or (math.isnan(a) and math.isnan(b)), where
        return True
    assert a == b, (where, a, b)
    return True


def test_fanned_out_on_threads_the_results_are_the_single_process_ones() -> None:
    reference, current = frames()
    alone = drift_of(reference, current, None)
    assert {"amount", "x"} <= set(alone["drifted_columns"])  # a real shift was found
    assert "steady" not in alone["drifted_columns"]
    with ThreadPoolExecutor(3) as pool:
        assert drift_of(reference, current, pool) == alone
        assert profile_of(reference, pool) == profile_of(reference, None)


def test_an_installed_executor_is_the_current_one_for_its_block_only() -> None:
    assert executor.current() is None
    with ThreadPoolExecutor(1) as pool, executor.installed(pool):
        assert executor.current() is pool
        with pytest.raises(RuntimeError, match="installed already"), executor.installed(pool):
            pass
    assert executor.current() is None


@pytest.mark.prefect
def test_on_a_dask_cluster_the_results_are_the_single_process_ones() -> None:
    require_prefect()
    from distributed import get_task_stream

    from driftloop.orchestration import engine

    reference, current = frames()
    alone_drift, alone_profile = drift_of(reference, current, None), profile_of(reference, None)
    with engine.session(EngineSpec(name="dask", workers=2, threads_per_worker=1)):
        pool = executor.current()
        assert isinstance(pool, engine.ClusterExecutor)
        client = engine._session.connect() if engine._session else None
        with get_task_stream(client) as stream:
            assert drift_of(reference, current, pool) == alone_drift
            # the same to the last bits but one: Polars sums a float column in another
            # order on a 1-thread worker than on this process's threads (a mean differed in
            # its 16th digit); everything else is equal
            assert same(profile_of(reference, pool), alone_profile)
    ran = {(t["key"].split("-")[0], t["worker"]) for t in stream.data}
    assert {name for name, _ in ran} >= {"_column_drift_of", "_summaries"}
    assert all(worker.startswith("tcp://127.0.0.1:") for _, worker in ran)
    assert executor.current() is None  # the session took its executor with it
