"""A pass's S3 requests follow new work, not history: the markers of a stage folder come
from one paginated listing, not a GET each, and a sweep reads a marker only where its
listing leaves a doubt. Counted with botocore's event hooks on the real client, against the
moto server: no timing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import driftloop
from driftloop.core import s3client

from .fixtures.moto import S3Env
from .helpers import write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: tiny
task: regression
target: y
sources: [{{name: points, path: data/raw/points/*.csv}}]
contract:
  columns:
    x: {{dtype: float}}
    y: {{dtype: float}}
ingest: {{settle_seconds: 0}}
model: {{enabled: false}}
outputs: {outputs}
"""


class Requests:
    """S3 requests by operation (and GETs of markers), from botocore's before-send hook."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.marker_gets = 0

    def __call__(self, request: Any, event_name: str, **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        self.ops[op] += 1
        if op == "GetObject" and request.url.split("?")[0].endswith("/_SUCCESS"):
            self.marker_gets += 1

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _land_and_run(project: Path, n: int) -> Requests:
    """Land the ``n``-th file, run a pass and count its S3 requests."""
    rows = "x,y\n" + "".join(f"{i + n},{2 * i}\n" for i in range(20))
    (project / "data" / "raw" / "points" / f"f{n:03d}.csv").write_text(rows)
    counted = Requests()
    client = s3client.client(s3client.S3Settings())  # the outputs' (no storage section)
    client.meta.events.register("before-send.s3", counted)
    try:
        result = driftloop.run(project)
    finally:
        client.meta.events.unregister("before-send.s3", counted)
    assert [(r.stage, r.outcome) for r in result.reports] == [("prep", "ran"), ("features", "ran")]
    return counted


def test_a_new_batch_pass_costs_the_same_requests_at_any_history(
    s3_env: S3Env, tmp_path: Path
) -> None:
    project = tmp_path / "p"
    write_spec(project, SPEC.format(outputs=s3_env.url("out")))
    (project / "data" / "raw" / "points").mkdir(parents=True)
    counts = [_land_and_run(project, n) for n in range(1, 25)]
    early, late = counts[4], counts[23]  # 4 and 23 batches of history
    # per-batch marker GETs would add 2 a batch (processed, features) to the facts and 1
    # an output to each sweep: 19 more batches would be 50+ more requests
    assert late.marker_gets == early.marker_gets, (early.ops, late.ops)
    assert late.total - early.total <= 2, (early.ops, late.ops)
    assert late.ops["ListObjectsV2"] <= early.ops["ListObjectsV2"] + 2, (early.ops, late.ops)
