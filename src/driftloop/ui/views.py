"""What each dashboard view shows, read through the interfaces the CLI reads through: the
state database (:class:`~driftloop.core.state.StateDB`), the layout's committed outputs and
their manifests, the registry (:func:`~driftloop.models.registry.open_registry`) and
``driftloop status``'s own summary (:func:`~driftloop.orchestration.status.project_status`).

Each function returns plain values for a template. Views over batches read one page of them
(the manifests and reports of that page only), so a page costs the same at 1,000 batches as
at ten.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.core.layout import Layout, is_complete, read_manifest
from driftloop.core.spec import Spec, load_spec
from driftloop.core.state import Batch, StateDB, state_exists

PAGE = 60  # batches per page of the Data and Drift views
SAMPLE_ROWS = 20  # quarantined rows shown with a batch


@dataclass(frozen=True)
class Project:
    """A project folder, its spec (read once, as the server reads it) and layout."""

    root: Path
    spec: Spec
    layout: Layout

    @classmethod
    def open(cls, root: Path) -> Project:
        root = root.resolve()
        return cls(root, load_spec(root), Layout(root))

    def has_state(self) -> bool:
        return state_exists(self.layout.state_db, self.spec.state.url)

    @contextmanager
    def db(self) -> Iterator[StateDB]:
        with StateDB(self.layout.state_db, url=self.spec.state.url) as db:
            yield db


def page_of(items: list[Any], page: int | None, size: int = PAGE) -> tuple[list[Any], int, int]:
    """The items of one page (page 1 is the newest: the end of the list), the page shown and
    the number of pages."""
    pages = max(1, math.ceil(len(items) / size))
    shown = min(max(1, page or 1), pages)
    end = len(items) - (shown - 1) * size
    return items[max(0, end - size) : end], shown, pages


def _manifest(folder: Any) -> dict[str, Any] | None:
    try:
        return read_manifest(folder) if is_complete(folder) else None
    except (OSError, ValueError):
        return None


# -- Now ---------------------------------------------------------------------------------


def now_view(project: Project) -> dict[str, Any]:
    """The champion, the loop's state and what needs a person (``attention``)."""
    from driftloop.orchestration.failures import batch_failures
    from driftloop.orchestration.status import project_status

    if not project.has_state():
        return {"empty": True, "project": project.spec.name}
    status = project_status(project.root, events=0, runs=10, spec=project.spec)
    failures = batch_failures(project.root, spec=project.spec)
    champion = status["champion"]
    with project.db() as db:
        load_failed = db.last_event("ModelLoadFailed")
        served = db.last_event("ModelServed")
    if load_failed and served and served["id"] > load_failed["id"]:
        load_failed = None
    version = _champion_version(project, champion["version"])
    attention = []
    for f in failures["unresolved"]:
        attention.append(
            {
                "what": f"{f['stage']} failed on batch {f['batch_id']}",
                "detail": str(f["error"]).splitlines()[0] if f["error"] else "",
                "fix": f"driftloop batches retry {f['batch_id']} | driftloop batches dismiss "
                f"{f['batch_id']} --reason TEXT",
                "href": f"data/{f['batch_id']}" if f["batch_id"] else None,
            }
        )
    pending = status["pending"]
    for key in pending["files_changed_in_place"]:
        attention.append(
            {
                "what": f"{key} changed in place",
                "detail": "a raw file taken earlier now has other content",
                "fix": "land new data under a new name",
                "href": None,
            }
        )
    for change in status["contract_changes"]:
        attention.append(
            {
                "what": f"new values in column {change['column']}",
                "detail": ", ".join(str(v["value"]) for v in change["values"][:5]),
                "fix": f"add them to {change['proposed']['key']} in driftloop.yaml",
                "href": "data#contract-changes",
            }
        )
    if status["registry_history_lost"]:
        attention.append(
            {
                "what": "the registry lost versions",
                "detail": status["registry_history_lost"]["message"],
                "fix": "",
                "href": None,
            }
        )
    if load_failed:
        attention.append(
            {
                "what": "a server could not load the champion",
                "detail": str(load_failed.get("error") or load_failed.get("reason") or ""),
                "fix": "see the server's log; roll back from the Models view",
                "href": "models",
            }
        )
    watch = status["watch"]
    return {
        "empty": False,
        "project": project.spec.name,
        "metric": project.spec.metric,
        "champion": {**champion, **version},
        "batches": status["batches"],
        "pending": pending,
        "watch": watch,
        "last_pass": status["stage_runs"][0] if status["stage_runs"] else None,
        "verdict": status["last_drift_verdict"],
        "attention": attention,
        "dismissed": failures["dismissed"],
        "stale": status["stale_batches"],
    }


def _champion_version(project: Project, version: str | None) -> dict[str, Any]:
    """The champion's metric and training data, from the registry."""
    from driftloop.core.errors import DriftloopError
    from driftloop.models.registry import open_registry

    if version is None:
        return {}
    try:
        found = open_registry(project.spec, project.layout).get_version(version)
    except DriftloopError as exc:
        return {"registry_error": str(exc)}
    if found is None:
        return {}
    metric = project.spec.metric
    batches = [b for b in found.tags.get("driftloop.batches", "").split(",") if b]
    return {
        "holdout": found.metrics.get(f"holdout_{metric}"),
        "baseline": found.metrics.get(f"baseline_{metric}"),
        "trained_on": batches,
        "rows": found.tags.get("driftloop.served_rows"),
    }


# -- Data --------------------------------------------------------------------------------


def batch_counts(project: Project, batch: Batch) -> dict[str, Any]:
    """A batch's rows by fate, from its prep manifest (or, when prep failed after writing
    its quarantine, from the quarantine's manifest)."""
    prep = _manifest(project.layout.processed / batch.batch_id)
    if prep is not None:
        return {
            "batch_id": batch.batch_id,
            "seq": batch.seq,
            "created_at": batch.created_at,
            "rows_in": prep["rows_in"],
            "ok": prep["rows_ok"],
            "quarantined": prep["rows_quarantined"],
            "duplicate": prep["rows_duplicate"],
            "files_quarantined": prep.get("files_quarantined", []),
            "prepared": True,
        }
    quarantine = _manifest(project.layout.quarantine / batch.batch_id) or {}
    return {
        "batch_id": batch.batch_id,
        "seq": batch.seq,
        "created_at": batch.created_at,
        "rows_in": None,
        "ok": 0,
        "quarantined": quarantine.get("rows_quarantined", 0),
        "duplicate": quarantine.get("rows_duplicate", 0),
        "files_quarantined": quarantine.get("files_quarantined", []),
        "prepared": False,
    }


def data_view(project: Project, page: int | None) -> dict[str, Any]:
    """One page of batches with their rows by fate, the files no source matched or no
    reader could read, and the contract changes prep proposed."""
    from driftloop.core.storage import candidate_files, unmatched_files
    from driftloop.orchestration.status import contract_changes

    if not project.has_state():
        return {"empty": True}
    with project.db() as db:
        every = db.batches()
        failed = {f["batch_id"] for f in db.failures(dismissed=False) if f["stage"] == "prep"}
        proposed = db.events_after(0, types=("ContractChangeProposed",))
    batches, shown, pages = page_of(every, page)
    rows = [batch_counts(project, b) | {"failed": b.batch_id in failed} for b in batches]
    unreadable = [
        {"batch_id": r["batch_id"], **f} for r in reversed(rows) for f in r["files_quarantined"]
    ]
    listed = candidate_files(project.spec, project.layout)
    return {
        "empty": False,
        "batches": rows,
        "total": len(every),
        "page": shown,
        "pages": pages,
        "unmatched": unmatched_files(project.spec, project.layout, listed),
        "unreadable": unreadable,
        "contract_changes": contract_changes(project.spec, proposed),
        "proposed_events": proposed[-10:],
    }


def batch_view(project: Project, batch_id: str) -> dict[str, Any]:
    """One batch: its raw files, prep manifest, quarantine reasons and a sample of the
    quarantined rows, its check against the champion."""
    from driftloop.core.layout import scan_output

    with project.db() as db:
        batch = db.batch(batch_id)
        files = db.batch_files(batch_id)
        runs = [r for r in db.failures() if r["batch_id"] == batch_id]
    layout = project.layout
    prep = _manifest(layout.processed / batch_id)
    quarantine = _manifest(layout.quarantine / batch_id)
    reasons = (prep or {}).get("quarantine_reasons") or (quarantine or {}).get("reasons") or []
    sample: list[dict[str, Any]] = []
    columns: list[str] = []
    if quarantine is not None and (quarantine.get("rows_quarantined") or 0) > 0:
        frame = scan_output(layout.quarantine / batch_id, "rows.parquet").head(SAMPLE_ROWS)
        table = frame.collect()
        columns = table.columns
        sample = [{k: _cell(v) for k, v in r.items()} for r in table.iter_rows(named=True)]
    check = _manifest(layout.batch_checks / batch_id)
    return {
        "batch": batch._asdict(),
        "files": [f._asdict() for f in files],
        "counts": batch_counts(project, batch),
        "prep": prep,
        "reasons": reasons,
        "files_quarantined": (prep or quarantine or {}).get("files_quarantined", []),
        "columns": columns,
        "sample": sample,
        "check": check,
        "failures": runs,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


# -- Models ------------------------------------------------------------------------------


def models_view(project: Project) -> dict[str, Any]:
    """Every version with its holdout metric, the champion's metric over time, every
    decision with its reason."""
    from driftloop.models.registry import CHAMPION, open_registry

    registry = open_registry(project.spec, project.layout)
    versions = registry.versions()
    decisions: list[dict[str, Any]] = []
    if project.has_state():
        with project.db() as db:
            decisions = db.decisions(project.spec.name)
    metric = project.spec.metric
    by_version = {v.version: v for v in versions}
    champion = registry.alias(CHAMPION)
    rows = [
        {
            "version": v.version,
            "created": v.created,
            "aliases": v.aliases,
            "holdout": v.metrics.get(f"holdout_{metric}"),
            "baseline": v.metrics.get(f"baseline_{metric}"),
            "decision": v.tags.get("driftloop.decision"),
            "batches": [b for b in v.tags.get("driftloop.batches", "").split(",") if b],
            "rows": v.tags.get("driftloop.served_rows"),
        }
        for v in versions
    ]
    # the champion's holdout metric after each decision that moved it
    timeline = []
    for d in decisions:
        if d["decision"] == "rejected" or d.get("applied") not in (0, 1, None):
            continue
        found = by_version.get(str(d["version"]))
        value = found.metrics.get(f"holdout_{metric}") if found else None
        timeline.append({"ts": d["ts"], "version": str(d["version"]), "value": value})
    return {
        "metric": metric,
        "champion": champion,
        "versions": rows,
        "decisions": list(reversed(decisions)),
        "timeline": timeline,
    }


def version_view(project: Project, version: str) -> dict[str, Any] | None:
    """One version's lineage: the batches it learned from and their raw files."""
    from driftloop.models.registry import open_registry

    found = open_registry(project.spec, project.layout).get_version(version)
    if found is None:
        return None
    batches = [b for b in found.tags.get("driftloop.batches", "").split(",") if b]
    files: dict[str, list[dict[str, Any]]] = {}
    decisions: list[dict[str, Any]] = []
    if project.has_state():
        with project.db() as db:
            files = {b: [f._asdict() for f in db.batch_files(b)] for b in batches}
            decisions = [d for d in db.decisions(project.spec.name) if str(d["version"]) == version]
    return {
        "version": found.version,
        "run_id": found.run_id,
        "aliases": found.aliases,
        "metrics": dict(sorted(found.metrics.items())),
        "tags": dict(sorted(found.tags.items())),
        "batches": batches,
        "files": files,
        "decisions": decisions,
    }


# -- Drift -------------------------------------------------------------------------------


def drift_view(project: Project, page: int | None) -> dict[str, Any]:
    """One page of batch checks: each feature's drift score, realized and estimated
    performance with their intervals, and the report of each."""
    import json

    if not project.has_state():
        return {"empty": True}
    with project.db() as db:
        every = db.batches()
    batches, shown, pages = page_of(every, page)
    checks = []
    for b in batches:
        manifest = _manifest(project.layout.batch_checks / b.batch_id)
        if manifest is None or not manifest.get("paths"):
            continue
        report_path = manifest["paths"].get("json")
        try:
            report = json.loads(_read_text(project, report_path))
        except (OSError, ValueError, TypeError):
            continue
        checks.append(_check_row(b, manifest, report, project.spec.metric))
    features: list[str] = []
    for c in checks:
        for name in c["scores"]:
            if name not in features:
                features.append(name)
    return {
        "empty": False,
        "checks": checks,
        "features": features,
        "page": shown,
        "pages": pages,
        "total": len(every),
        "metric": project.spec.metric,
    }


def _read_text(project: Project, path: str) -> str:
    """A report by the path its manifest names (relative to the project, or a URL)."""
    if "://" in path:
        from driftloop.core.s3outputs import get_object

        return get_object(path).decode("utf-8")
    found = Path(path)
    return (found if found.is_absolute() else project.root / found).read_text(encoding="utf-8")


def _check_row(
    batch: Batch, manifest: dict[str, Any], report: dict[str, Any], metric: str
) -> dict[str, Any]:
    scores: dict[str, tuple[float | None, bool]] = {}
    for c in report.get("data_drift", {}).get("columns", []):
        effect, threshold = c.get("effect"), c.get("effect_threshold")
        score = None
        if effect is not None and threshold:
            score = max(0.0, effect - (c.get("noise_floor") or 0.0)) / threshold
        scores[c["column"]] = (score, bool(c.get("drift")))
    perf = report.get("performance") or {}
    overall = perf.get("overall") or {}
    # the estimate (no labels needed) has no interval: one value per metric it can estimate
    estimate = report.get("estimated_performance") or {}
    value = (estimate.get("overall") or {}).get(perf.get("metric") or metric)
    flags = estimate.get("below_holdout_by_more_than_tolerance") or {}
    estimated = (
        {"value": value, "decayed": bool(flags.get(perf.get("metric") or metric))}
        if value is not None
        else {}
    )
    return {
        "batch_id": batch.batch_id,
        "created_at": batch.created_at,
        "version": manifest.get("champion_version"),
        "summary": manifest.get("summary", {}),
        "scores": scores,
        "realized": overall,
        "estimated": estimated,
        "holdout": perf.get("holdout"),
        "decay_bound": perf.get("decay_bound"),
        "report": manifest["paths"].get("html"),
    }


# -- Events ------------------------------------------------------------------------------


def events_view(
    project: Project,
    *,
    types: tuple[str, ...] = (),
    batch_id: str | None = None,
    before: int | None = None,
    after: int | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """A page of the event log, newest first, filtered by type and batch."""
    if not project.has_state():
        return {"empty": True, "events": [], "types": []}
    with project.db() as db:
        found = db.events_page(
            types=types, batch_id=batch_id, before=before, after=after, limit=limit
        )
        known = db.event_types()
    return {"empty": False, "events": [_event_row(e) for e in found], "types": known}


_SHOWN = ("id", "ts", "type", "batch_id", "version")


def _event_row(event: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in event.items() if k not in _SHOWN}
    detail = ", ".join(f"{k}={_short(v)}" for k, v in sorted(rest.items()))
    return {
        "id": event["id"],
        "ts": str(event["ts"])[:19],
        "type": event["type"],
        "batch_id": event.get("batch_id") or "",
        "version": str(event.get("version") or ""),
        "detail": detail[:300],
    }


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
