"""A small project for the dashboard's tests: three batches (the first with rows that break
the contract), a model trained on each, two champions in the history, every batch checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from driftloop.core.layout import Layout
from driftloop.core.spec import load_spec
from driftloop.core.state import StateDB
from driftloop.pipeline import run
from driftloop.promotion.alias import manual_alias_change

from .helpers import write_spec
from .test_lifecycle import SPEC, land

BAD_ROWS = (
    "2024-01-05 10:00:00,oops,0.5,a,yes\n"  # x1 is not a number
    "2024-01-05 10:01:00,oops,0.1,b,no\n"
    "not a time,0.3,0.2,c,no\n"  # t breaks its format
)


def build(project: Path, *, tracking_uri: str | None = None, rows: int = 400) -> None:
    data: dict[str, Any] = yaml.safe_load(SPEC)
    data["serving"] = {"events_poll_seconds": 0.2}  # a server follows a rollback at once
    data["retrain"] = {"every_batches": 1, "on_drift": True, "on_decay": True}
    data["monitoring"] = {"permutations": 99}
    if tracking_uri is not None:
        data["model"] = {"tracking_uri": tracking_uri}
    write_spec(project, yaml.safe_dump(data, sort_keys=False))
    land(project, "a.csv", rows, seed=1)
    with (project / "data" / "raw" / "s" / "a.csv").open("a", encoding="utf-8") as f:
        f.write(BAD_ROWS)
    assert not run(project).failed
    land(project, "b.csv", rows, seed=7, start_day=7)
    assert not run(project).failed
    land(project, "c.csv", rows, seed=11, start_day=10)
    assert not run(project).failed
    spec, layout = load_spec(project), Layout(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        moved = [d for d in db.decisions(spec.name, effective=True) if d["decision"] != "rejected"]
        if len(moved) < 2:  # the gate kept the first model: make a second champion by hand
            manual_alias_change(
                spec,
                layout,
                db,
                version="2",
                why="a second champion for the test",
                actor="t",
                force=True,
            )
