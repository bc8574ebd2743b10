"""A registry that lost its history: the MLflow store deleted and made again.

The new store numbers its first model v1 again. Before, the machine's model cache was keyed
by the number, so the gate, monitoring and the server took the old v1's package for the new
v1 (another run). Now an entry is keyed by the version and its run id, the server compares
run ids, and the loss is reported once, loudly: in ``run``'s output, ``status`` and the
event log. All on the real MLflow, on a SQLite store in the test's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.core.layout import Layout, read_manifest
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.models import cache as model_cache
from driftloop.models.registry import CHAMPION, lost_versions, open_registry
from driftloop.serving.champion import ChampionSource, ChampionWatcher, ModelSlot
from driftloop.serving.model import ServedModel

from .helpers import write_spec
from .test_lifecycle import SPEC, land, train_report

HANG_GUARD = 300.0  # seconds: only a hung watcher thread fails on it


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


def _watcher(project: Path, slot: ModelSlot, swapped: threading.Event) -> ChampionWatcher:
    spec = load_spec(project)
    return ChampionWatcher(
        ChampionSource(spec, Layout(project)),
        slot,
        poll_seconds=3600.0,  # one registry check at start, then only when asked
        events_poll_seconds=0.05,
        load=_load(spec.name),  # type: ignore[arg-type]
        on_swap=lambda new, old: swapped.set(),
        on_failure=lambda version, reason: None,
    )


def first_run(project: Path) -> dict[str, Any]:
    """The first training, in a child process: the store is deleted after it, as a user
    would between two runs (a process that had the store open would keep the deleted file)."""
    done = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "run", "-p", str(project)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with StateDB(Layout(project).state_db) as db:
        row = db.last_succeeded("train")
    assert row is not None
    return read_manifest(project / row["output"])


def test_a_store_made_again_is_reported_and_its_new_v1_is_never_the_old_one(
    tmp_path: Path,
) -> None:
    from driftloop.pipeline import run

    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", 600, seed=1)
    first = first_run(tmp_path)
    assert first["version"] == "1" and first["registry_warning"] is None
    layout, spec = Layout(tmp_path), load_spec(tmp_path)

    # The store and its artifacts are deleted; the next training makes them again.
    (tmp_path / "mlflow.db").unlink()
    shutil.rmtree(tmp_path / "mlartifacts")
    land(tmp_path, "b.csv", 600, seed=2, start_day=5)
    out = CliRunner().invoke(app, ["run", "-p", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "WARNING: the model registry at" in out.output
    assert "lost its history" in out.output and "v1 (run " in out.output, out.output

    registry = open_registry(spec, layout)
    [again] = registry.versions()
    assert again.version == "1" and again.run_id != first["run_id"]
    # two cache entries for "v1", one per run; the registry's v1 gets its own
    entries = sorted(p.name for p in layout.model_cache.glob("*/1-*"))
    assert entries == sorted([f"1-{first['run_id']}", f"1-{again.run_id}"])
    fetched = model_cache.fetch(registry, layout, "1")
    assert model_cache.read_info(fetched)["run_id"] == again.run_id

    with StateDB(layout.state_db) as db:
        [lost] = db.events_after(0, types=("RegistryHistoryLost",))
    assert lost["versions"] == [{"version": "1", "run_id": first["run_id"], "now": again.run_id}]
    assert "Restore the store from a backup" in lost["message"]

    status = CliRunner().invoke(app, ["status", "-p", str(tmp_path), "--json"])
    assert status.exit_code == 0, status.output
    assert "lost its history" in json.loads(status.output)["registry_history_lost"]["message"]
    shown = CliRunner().invoke(app, ["status", "-p", str(tmp_path)])
    assert "WARNING (" in shown.output and "lost its history" in shown.output

    # Reported once: the next training in the same (new) store says nothing more.
    land(tmp_path, "c.csv", 600, seed=3, start_day=10)
    third = train_report(run(tmp_path))
    assert third["version"] == "2" and third["registry_warning"] is None
    with StateDB(layout.state_db) as db:
        assert len(db.events_after(0, types=("RegistryHistoryLost",))) == 1


def test_a_server_holding_the_old_v1_loads_the_registrys_new_v1(tmp_path: Path) -> None:
    from driftloop.pipeline import run

    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", 600, seed=1)
    first = first_run(tmp_path)
    layout, spec = Layout(tmp_path), load_spec(tmp_path)
    [old_entry] = layout.model_cache.glob(f"*/1-{first['run_id']}")
    (tmp_path / "mlflow.db").unlink()
    shutil.rmtree(tmp_path / "mlartifacts")
    land(tmp_path, "b.csv", 600, seed=2, start_day=5)
    train_report(run(tmp_path))
    registry = open_registry(spec, layout)
    assert registry.alias(CHAMPION) == "1"
    new_run = registry.get_version("1").run_id  # type: ignore[union-attr]
    assert new_run != first["run_id"]

    # A server that was serving the old v1 when the store went away.
    slot = ModelSlot()
    slot.swap(_load(spec.name)("1", old_entry))  # type: ignore[operator]
    assert slot.current is not None and slot.current.info["run_id"] == first["run_id"]
    swapped = threading.Event()
    watcher = _watcher(tmp_path, slot, swapped)
    watcher._follow_registry()  # one registry check, as the thread makes every poll
    assert slot.current.info["run_id"] == new_run, "the old v1 kept serving for the new v1"

    # A server starting now serves the new v1 from the cache (the state database's champion).
    fresh, started = ModelSlot(), threading.Event()
    watcher = _watcher(tmp_path, fresh, started)
    watcher.start()
    try:
        assert watcher.first_attempt.wait(HANG_GUARD)
        assert fresh.current is not None and fresh.current.info["run_id"] == new_run
    finally:
        watcher.stop()


@pytest.mark.parametrize(
    ("recorded", "present", "reported", "expected"),
    [
        ([{"version": "1", "run_id": "a"}], {"1": "a"}, set(), []),
        ([{"version": "1", "run_id": "a"}], {}, set(), [("1", "a", None)]),
        ([{"version": "1", "run_id": "a"}], {"1": "b"}, set(), [("1", "a", "b")]),
        ([{"version": "1", "run_id": "a"}], {"1": "b"}, {"a"}, []),  # said once
        ([{"version": "1", "run_id": "a", "store": "other"}], {}, set(), []),  # another store
    ],
)
def test_lost_versions(
    recorded: list[dict[str, str]],
    present: dict[str, str | None],
    reported: set[str],
    expected: list[tuple[str, str, str | None]],
) -> None:
    found = lost_versions(recorded, present, "this", reported)  # type: ignore[arg-type]
    assert [(v["version"], v["run_id"], v["now"]) for v in found] == expected
