"""The checked mark: a pass keys only the batches checked since the last pass, not every
batch a project has kept behind its champion (a project that retrains on drift only)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.core.layout import Layout
from driftloop.core.state import StateDB
from driftloop.monitoring.stage import CHECKED, check_signals, record_signal
from driftloop.orchestration import facts as facts_module
from driftloop.orchestration import settled
from driftloop.pipeline import run
from driftloop.testing import InMemoryRegistry, forget, memory_store

from .test_lifecycle import land, write_memory_spec

# new data alone never trains, and what the checks find does not either: every batch after
# the first stays behind the champion, checked against it
POLICY = {"every_batches": 0, "on_drift": False, "on_decay": False}


@pytest.fixture
def registry() -> Iterator[InMemoryRegistry]:
    found = memory_store("synth")
    yield found
    forget(found.uri)


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The batches whose check facts a pass works out from their keys (the real function,
    recorded)."""
    seen: list[str] = []
    real = facts_module._with_check

    def spy(ctx: Any, batch: Any, *args: Any) -> Any:
        seen.append(batch.batch_id)
        return real(ctx, batch, *args)

    monkeypatch.setattr(facts_module, "_with_check", spy)
    return seen


def _checked(result: Any) -> list[str]:
    return [str(r.batch_id) for r in result.reports if r.stage == "monitor" and r.outcome == "ran"]


def _mark(project: Path) -> dict[str, Any]:
    with StateDB(Layout(project).state_db) as db:
        found = db.fact(CHECKED)
    assert found is not None
    mark: dict[str, Any] = json.loads(found)
    return mark


def test_a_pass_keys_only_the_batches_after_the_checked_mark(
    tmp_path: Path, registry: InMemoryRegistry, keyed: list[str]
) -> None:
    write_memory_spec(tmp_path, registry, retrain=POLICY)
    land(tmp_path, "a.csv", 300, seed=1)
    first = run(tmp_path)
    assert first.ingest.batch is not None
    assert any(r.stage == "promote" and r.outcome == "ran" for r in first.reports)
    behind = []
    for i, name in enumerate(["b.csv", "c.csv", "d.csv"]):
        land(tmp_path, name, 120, seed=10 + i, start_day=1 + i)
        result = run(tmp_path)
        assert result.ingest.batch is not None
        behind.append(result.ingest.batch.batch_id)
        assert _checked(result) == behind[-1:]  # the new batch, against v1
    with StateDB(Layout(tmp_path).state_db) as db:
        seqs = {b.batch_id: b.seq for b in db.batches()}
        signals = check_signals(db)
    mark = _mark(tmp_path)
    assert mark["champion"] == "1"
    assert mark["seq"] == seqs[behind[-1]]  # every batch behind the champion is covered
    assert mark["found"] == {
        b: [s["drift"], s["decay"]] for b, s in signals.items() if s["drift"] or s["decay"]
    }

    keyed.clear()
    land(tmp_path, "e.csv", 120, seed=20, start_day=5)
    result = run(tmp_path)
    assert result.ingest.batch is not None
    new = result.ingest.batch.batch_id
    assert _checked(result) == [new]
    assert set(keyed) == {new}  # the three batches the mark covers were not keyed again
    assert _mark(tmp_path)["seq"] == max(seqs.values()) + 1

    # a check that is gone is made again, and the mark covers it once more afterwards
    shutil.rmtree(Layout(tmp_path).batch_checks / behind[0])
    keyed.clear()
    again = run(tmp_path, quick=False)
    assert _checked(again) == [behind[0]]
    assert behind[0] in keyed
    assert _mark(tmp_path)["seq"] == max(seqs.values()) + 1


def test_the_mark_holds_for_one_champion_and_moves_back_when_a_covered_batch_is_checked(
    tmp_path: Path, registry: InMemoryRegistry, keyed: list[str]
) -> None:
    write_memory_spec(tmp_path, registry, retrain=POLICY)
    land(tmp_path, "a.csv", 300, seed=1)
    run(tmp_path)
    for i, name in enumerate(["b.csv", "c.csv"]):
        land(tmp_path, name, 120, seed=10 + i, start_day=1 + i)
        run(tmp_path)
    mark = _mark(tmp_path)
    with StateDB(Layout(tmp_path).state_db) as db:
        b, c = db.batches()[1:]
        # a mark for another champion covers nothing: every batch behind is keyed
        db.record_fact(CHECKED, json.dumps({**mark, "champion": "7"}))
        db.record_fact(settled.FACT, "")  # a pass that looks, not the settled answer
    keyed.clear()
    result = run(tmp_path, quick=False)
    assert _checked(result) == []  # their checks against v1 are current: nothing to redo
    assert set(keyed) == {b.batch_id, c.batch_id}
    assert _mark(tmp_path) == mark  # and the pass recorded the mark for v1 again

    # a check made again on a covered batch moves the mark back before it
    with StateDB(Layout(tmp_path).state_db) as db:
        record_signal(db, b, {"drift": True, "decay": False})
        assert json.loads(db.fact(CHECKED) or "{}")["seq"] == b.seq - 1
        record_signal(db, c, {"drift": False, "decay": False})  # after the mark: unchanged
        assert json.loads(db.fact(CHECKED) or "{}")["seq"] == b.seq - 1
        db.record_fact(settled.FACT, "")
    keyed.clear()
    run(tmp_path, quick=False)
    assert set(keyed) == {b.batch_id, c.batch_id}
    assert _mark(tmp_path)["found"] == {b.batch_id: [True, False]}
