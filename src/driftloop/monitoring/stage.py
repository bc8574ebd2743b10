"""The per-batch check against the champion, as a stage output."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from driftloop.core.layout import (
    Layout,
    atomic_output,
    seal,
)

MONITOR_VERSION = "1"


MONITOR_SECTIONS = ("monitoring", "target", "task", "model")


def check_batch(
    layout: Layout, batch_id: str, key: str, now: datetime | None, version: str | None
) -> dict[str, Any]:
    """``driftloop monitor --current data/processed/<batch>`` as a stage output."""
    from driftloop.monitoring.run import monitor

    current = layout.processed / batch_id
    report = monitor(layout.root, current=current, now=now, version=version).report
    manifest = {
        "stage": "monitor",
        "run_key": key,
        "batch_id": batch_id,
        "champion_version": report["model"]["version"],
        "summary": report["summary"],
        "paths": report.get("paths"),
    }
    with atomic_output(layout.batch_checks / batch_id) as tmp:
        seal(tmp, manifest)
    return manifest
