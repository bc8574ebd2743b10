"""A server follows a promotion on this machine at once: the gate and ``driftloop models
promote`` / ``rollback`` rewrite the state folder's ``champion-moved`` file, and the
champion watcher, told by the OS, checks the registry without waiting for a poll.

Both polls are set to an hour, so only the notification can make the swap before the hang
guard; how fast it is, is measured by ``benchmarks/latency.py``, not asserted here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.models import cache as model_cache
from driftloop.models.registry import CHAMPION, open_registry
from driftloop.promotion.alias import manual_alias_change
from driftloop.serving.champion import ChampionSource, ChampionWatcher, ModelSlot
from driftloop.serving.model import ServedModel

from .serving_helpers import synthetic_project

pytestmark = [pytest.mark.slow]

HANG_GUARD = 300.0  # seconds: far below the hour of both polls


def _load(name: str) -> object:
    def load(version: str, folder: Path) -> ServedModel:
        return ServedModel.load(
            name,
            version,
            folder / model_cache.PACKAGE,
            unknown_category="reject",
            info=model_cache.read_info(folder),
            compiled=folder / model_cache.COMPILED,
        )

    return load


def test_a_promotion_wakes_the_watcher_without_a_poll(tmp_path: Path) -> None:
    project = synthetic_project(tmp_path / "p", versions=2)
    spec, layout = load_spec(project), Layout(project)
    assert open_registry(spec, layout).alias(CHAMPION) == "2"
    slot = ModelSlot()
    swapped: list[str] = []
    changed = threading.Event()

    def on_swap(new: ServedModel, old: ServedModel | None) -> None:
        swapped.append(new.version)
        changed.set()

    watcher = ChampionWatcher(
        ChampionSource(spec, layout),
        slot,
        poll_seconds=3600.0,  # the registry: once at start
        events_poll_seconds=3600.0,  # the state database: once at start
        load=_load(spec.name),  # type: ignore[arg-type]
        on_swap=on_swap,
        on_failure=lambda version, reason: None,
    )
    watcher.start()
    try:
        assert watcher.first_attempt.wait(HANG_GUARD)
        assert watcher.notified.wait(HANG_GUARD), "the state folder is not watched"
        assert slot.current is not None and slot.current.version == "2"
        changed.clear()
        with StateDB(layout.state_db) as db:
            manual_alias_change(spec, layout, db, version="1", why="notify test", actor="test")
        assert changed.wait(HANG_GUARD), "the watcher did not follow the promotion"
        assert slot.current.version == "1"
        assert layout.champion_moved.is_file()
        changed.clear()
        with StateDB(layout.state_db) as db:
            manual_alias_change(spec, layout, db, version=None, why="notify test", actor="test")
        assert changed.wait(HANG_GUARD), "the watcher did not follow the rollback"
        assert slot.current.version == "2"
        assert swapped == ["2", "1", "2"]
    finally:
        watcher.stop()
