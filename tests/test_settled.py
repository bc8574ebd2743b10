"""A pass with nothing to do does nothing, and a settled ``driftloop run`` answers without
parsing the spec or importing the state layer; anything that could change the plan makes
the next pass an ordinary one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import driftloop
from driftloop.core.layout import Layout
from driftloop.core.state import StateDB
from driftloop.orchestration import settled
from driftloop.orchestration.lease import Lease
from driftloop.orchestration.loop import run_pass
from driftloop.orchestration.settled import quick_settled

from .helpers import write_spec
from .test_ingest import SPEC, land


def settled_project(tmp_path: Path) -> Path:
    write_spec(tmp_path, SPEC)
    land(tmp_path, "a.csv", [(1, 2), (3, 4)])
    first = driftloop.run(tmp_path)
    assert first.ingest.batch is not None and not first.failed
    assert quick_settled(tmp_path) is not None  # the pass ended with nothing left to do
    assert driftloop.run(tmp_path).reports == []
    return tmp_path


def stage_runs(project: Path) -> int:
    with StateDB(Layout(project).state_db) as db:
        return len(db.stage_runs(limit=1000))


def test_a_settled_pass_is_answered_quickly_and_the_ordinary_pass_agrees(tmp_path: Path) -> None:
    project = settled_project(tmp_path)
    runs = stage_runs(project)
    result = driftloop.run(project)
    assert not result.did_work and result.reports == []
    assert stage_runs(project) == runs
    assert quick_settled(project) is not None  # reading it changed nothing


def _land(p: Path) -> None:
    land(p, "b.csv", [(5, 6)])


def _rewrite_in_place(p: Path) -> None:
    raw = p / "data/raw/s/a.csv"
    stat = raw.stat()
    raw.write_text("x,y\n7,8\n9,9\n")  # same size, another content
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def _remove_raw(p: Path) -> None:
    (p / "data/raw/s/a.csv").unlink()


def _edit_spec(p: Path) -> None:
    write_spec(p, SPEC.replace("logs: [x]", "logs: []"))


def _withdraw_output(p: Path) -> None:
    batch = next((p / "data/features").iterdir())
    batch.rename(p / "data/features" / f".gone-{batch.name}")


def _record_a_run_elsewhere(p: Path) -> None:
    with StateDB(Layout(p).state_db) as db:
        key = "prep:elsewhere"
        db.start_run(key, "prep", "elsewhere")
        db.finish_run(key, "prep", "elsewhere", 0.1, "x", None)


def _hold_the_lease(p: Path) -> None:
    Lease(Layout(p).state_db, name="watch", seconds=600)._take()  # a watcher, alive


def _older_state_file(p: Path) -> None:
    conn = sqlite3.connect(Layout(p).state_db)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "change",
    [
        _land,
        _remove_raw,
        _edit_spec,
        _withdraw_output,
        _record_a_run_elsewhere,
        _hold_the_lease,
        _older_state_file,
    ],
)
def test_anything_that_could_change_the_plan_makes_an_ordinary_pass(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    project = settled_project(tmp_path)
    change(project)
    assert quick_settled(project) is None


def _recheck_due(p: Path) -> None:
    """As if ``ingest.recheck_seconds`` had passed since every identity and output was last
    checked (the time recorded 301 s earlier)."""
    with StateDB(Layout(p).state_db) as db:
        at = float(db.fact(settled.CHECKED) or "0")
        db.record_fact(settled.CHECKED, repr(at - 301))
        outputs = json.loads(db.fact(settled.OUTPUTS) or "{}")
        outputs["checked_at"] = float(outputs.get("checked_at") or 0) - 301
        db.record_fact(settled.OUTPUTS, json.dumps(outputs, sort_keys=True))


def test_a_file_rewritten_in_place_is_noticed_on_the_recheck(tmp_path: Path) -> None:
    """Between rechecks (``ingest.recheck_seconds``, 300 s by default) a pass reads the
    sources' names and takes the ledger's record of its files' identities: a file rewritten
    in place (no name changes) is noticed by the first pass after the next recheck, the quick
    answer's or the ordinary one's, and reported by every pass after until it is put back."""
    project = settled_project(tmp_path)
    _rewrite_in_place(project)
    assert quick_settled(project) is not None  # names only: not yet
    assert run_pass(project).ingest.changed == []  # the ordinary pass trusts the ledger too
    _recheck_due(project)
    assert quick_settled(project) is None  # the recheck looks at every file
    for _ in range(2):  # reported on the recheck's pass and on every pass after it
        result = driftloop.run(project)
        [changed] = result.ingest.changed
        assert changed.startswith("data/raw/s/a.csv: changed in place since it was ingested")
        assert result.ingest.batch is None
    assert quick_settled(project) is None


def test_a_clean_recheck_by_the_quick_answer_is_recorded(tmp_path: Path) -> None:
    project = settled_project(tmp_path)
    _recheck_due(project)
    with StateDB(Layout(project).state_db) as db:
        before = float(db.fact(settled.CHECKED) or "0")
    assert quick_settled(project) is not None  # every identity as the ledger has it
    with StateDB(Layout(project).state_db) as db:
        after = float(db.fact(settled.CHECKED) or "0")
    assert after > before + 300  # the next settled passes read names alone again


def test_a_landed_file_is_noticed_at_once_between_rechecks(tmp_path: Path) -> None:
    project = settled_project(tmp_path)
    land(project, "b.csv", [(5, 6)])
    result = driftloop.run(project)
    assert result.ingest.batch is not None
    assert [f.path for f in result.ingest.new_files] == ["data/raw/s/b.csv"]


def test_an_output_marker_removed_inside_its_folder_is_noticed_on_the_recheck(
    tmp_path: Path,
) -> None:
    """An output whose folder is gone or renamed is noticed at once (its stage folder
    changed); a ``_SUCCESS`` removed inside an output's own folder changes nothing a pass
    stamps, so the first ordinary pass after the recheck interval finds it and runs the
    stage again."""
    project = settled_project(tmp_path)
    [out] = (project / "data/processed").iterdir()
    (out / "_SUCCESS").unlink()
    assert run_pass(project).reports == []  # trusted: its stage folder is as it was
    _recheck_due(project)
    result = run_pass(project)
    assert [(r.stage, r.outcome) for r in result.reports][:1] == [("prep", "ran")]
    assert (out / "_SUCCESS").is_file()
    assert quick_settled(project) is not None  # and the project settles again


@pytest.mark.parametrize("name", ["DRIFTLOOP_STATE_URL", "MLFLOW_TRACKING_URI"])
def test_the_environment_that_picks_state_and_registry_is_part_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    project = settled_project(tmp_path)
    monkeypatch.setenv(name, f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert quick_settled(project) is None


def test_a_new_file_is_taken_by_the_next_run_after_a_settled_one(tmp_path: Path) -> None:
    project = settled_project(tmp_path)
    _land(project)
    result = driftloop.run(project)
    assert result.ingest.batch is not None and len(result.ingest.new_files) == 1


def test_a_settled_cli_run_imports_neither_the_spec_nor_the_state_layer(tmp_path: Path) -> None:
    project = settled_project(tmp_path)
    code = (
        "import sys\n"
        "from driftloop.cli import main\n"
        f"sys.argv = ['driftloop', 'run', '-p', {str(project)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "heavy = [m for m in ('sqlalchemy', 'driftloop.core.spec', 'driftloop.core.state',"
        " 'polars', 'boto3', 'botocore') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "nothing to do: every batch is up to date" in out.stdout
    assert "heavy: []" in out.stdout, out.stdout


def test_an_upgrade_that_keys_prep_differently_redoes_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftloop.prep import stage as prep_stage

    project = settled_project(tmp_path)
    assert quick_settled(project) is not None
    monkeypatch.setattr(prep_stage, "PREP_VERSION", "next")  # as a release that changes prep
    monkeypatch.setattr(driftloop, "__version__", "next")
    assert quick_settled(project) is None
    result = driftloop.run(project)
    assert [(r.stage, r.outcome) for r in result.reports] == [("prep", "ran"), ("features", "ran")]


def test_an_option_left_at_its_default_keys_nothing() -> None:
    from driftloop.core.spec import parse_spec

    base = {
        "name": "p",
        "task": "regression",
        "target": "y",
        "sources": [{"name": "s", "path": "data/raw/s/*.csv"}],
        "contract": {"columns": {"x": {"dtype": "float"}, "y": {"dtype": "float"}}},
    }
    plain, spelled = parse_spec(base), parse_spec({**base, "cleaning": {}})
    sections = ("sources", "contract", "cleaning")
    assert plain.section_hash(*sections) == spelled.section_hash(*sections)
    columns = {"x": {"dtype": "float", "min": 0}, "y": {"dtype": "float"}}
    changed = parse_spec({**base, "contract": {"columns": columns}})
    assert changed.section_hash(*sections) != plain.section_hash(*sections)
