"""``driftloop replay``: a historical dataset streamed through the real loop, in order.

The data (one file, in the project's primary source format) is ordered by the time column,
or kept in row order without one, and cut into an initial window and then batches (a number
of rows, or calendar periods of the time column). For each retrain policy compared, a fresh
project gets the initial window and one pass of the loop (the first model); then, batch by
batch, the champion of the moment scores the batch *before* the batch lands (prequential,
test-then-train: through the server's own scoring path), and then the batch lands as a raw
file and the loop makes a pass, which may check it, retrain and promote.

Policies: ``static`` (the first model only), ``every_batch`` (retrain on every batch) and
``triggered`` (the project's ``retrain`` section without its every-N-batches trigger: retrain
when the check of a new batch finds drift or decay, as configured, after any cooldown). The
result is a CSV with one row per policy and batch, a JSON summary and an HTML chart; the
policies' projects are deleted once their rows are written (``keep_projects`` keeps them).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from driftloop.core.errors import ProjectError
from driftloop.core.layout import Layout
from driftloop.core.spec import Spec, load_spec, parse_spec, read_yaml

log = logging.getLogger(__name__)

POLICIES: dict[str, dict[str, Any]] = {
    "static": {"every_batches": 0, "on_drift": False, "on_decay": False},
    "every_batch": {"every_batches": 1, "on_drift": False, "on_decay": False},
    # The project's own retrain section (drift, decay, cooldown, schedule), without the
    # every-N-batches trigger: what the policy adds over retraining on a fixed rhythm.
    "triggered": {"every_batches": 0},
}
Period = Literal["month", "week", "day"]
_TRUNCATE = {"month": "1mo", "week": "1w", "day": "1d"}


@dataclass
class ReplayResult:
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


def cut(
    frame: pl.DataFrame,
    spec: Spec,
    *,
    batch_size: int | None,
    by: Period | None,
    initial: int | None,
    initial_periods: int | None,
) -> list[pl.DataFrame]:
    """The initial window, then the batches (raw text rows, in stream order)."""
    if (batch_size is None) == (by is None):
        raise ProjectError("replay: give exactly one of --batch-size N or --by month|week|day")
    if spec.time_column is not None:
        from driftloop.prep.rules import parsed

        moment = parsed(spec.time_column, spec.contract.columns[spec.time_column])
        frame = frame.with_columns(moment.alias("__moment")).sort("__moment", maintain_order=True)
    if by is not None:
        if spec.time_column is None:
            raise ProjectError(
                "replay --by needs a time_column in driftloop.yaml; use --batch-size"
            )
        frame = frame.with_columns(
            pl.col("__moment").cast(pl.Datetime("us")).dt.truncate(_TRUNCATE[by]).alias("__period")
        )
        groups = [g for _, g in frame.group_by("__period", maintain_order=True)]
        k = initial_periods or 1
        parts = [pl.concat(groups[:k]), *groups[k:]]
    else:
        assert batch_size is not None
        start = initial or batch_size
        parts = [frame.head(start)] + [
            frame.slice(i, batch_size) for i in range(start, frame.height, batch_size)
        ]
    return [p.select(pl.exclude("__moment", "__period")) for p in parts if p.height]


def policy_spec(spec_text: str, project: Path, retrain: dict[str, Any]) -> str:
    """The project's spec for one policy: its own store and raw folder, files taken at once."""
    import yaml

    data = read_yaml(spec_text)
    if len(data["sources"]) > 1:
        raise ProjectError(
            "replay streams one file: projects with joined sources are not supported yet"
        )
    source = data["sources"][0]
    if source.get("format", "csv") != "csv":
        raise ProjectError(
            "replay lands batches as CSV: a project whose primary source is parquet is not "
            "supported yet (convert the data and use a csv source)"
        )
    layout = Layout(project)
    source["path"] = layout.source_pattern(source["name"], "csv")
    # replay lands its batches as CSV files with a header row and nothing above it
    csv_opts = {k: v for k, v in (source.get("csv") or {}).items() if k != "names"}
    source["csv"] = {**csv_opts, "has_header": True, "skip_rows": 0}
    data["ingest"] = {**(data.get("ingest") or {}), "settle_seconds": 0, "batch_window_seconds": 0}
    data["retrain"] = retrain
    data["model"] = {
        **(data.get("model") or {}),
        "tracking_uri": f"sqlite:///{layout.mlflow_db.resolve()}",
    }
    # its own state database too, whatever the project's spec or DRIFTLOOP_STATE_URL say
    data["state"] = {"url": f"sqlite:///{(project / '.driftloop' / 'state.db').resolve()}"}
    # and its own outputs, in its folder: never the project's bucket (outputs: s3://...)
    data.pop("outputs", None)
    monitoring = data.get("monitoring") or {}
    data["monitoring"] = {**monitoring, "on_new_data": True}
    parse_spec(data, "replay spec")  # fails here, not in the middle of a replay
    return str(yaml.safe_dump(data, sort_keys=False))


def replay(
    project: Path,
    data: Path,
    *,
    out: Path | None = None,
    batch_size: int | None = None,
    by: Period | None = None,
    initial: int | None = None,
    initial_periods: int | None = None,
    policies: tuple[str, ...] = tuple(POLICIES),
    say: Callable[[str], None] = print,
    keep_projects: bool = False,
) -> ReplayResult:
    """Replay ``data`` through the loop under each policy; write the report (see module doc).

    Each policy's project (raw batches, outputs, models, registry: hundreds of times the
    data's size) is deleted once its rows are in the report, unless ``keep_projects``."""
    spec = load_spec(project)
    spec_text = Layout(project).spec.read_text(encoding="utf-8")
    frame = _read_raw(data, spec)
    parts = cut(
        frame, spec, batch_size=batch_size, by=by, initial=initial, initial_periods=initial_periods
    )
    if len(parts) < 2:
        raise ProjectError(
            f"replay: {data} gives {len(parts)} batch(es); need an initial window and more"
        )
    folder = out or Layout(project).replay / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    result = ReplayResult(folder)
    say(
        f"replay {data.name}: initial window of {parts[0].height} rows, "
        f"then {len(parts) - 1} batches"
    )
    for name in policies:
        if name not in POLICIES:
            raise ProjectError(f"replay: unknown policy {name!r}; use {list(POLICIES)}")
        result.rows += _replay_policy(name, spec, spec_text, parts, folder / name, say)
        if not keep_projects:
            size = _folder_bytes(folder / name)
            shutil.rmtree(folder / name)
            say(f"  removed its project ({size / 2**20:.0f} MB; --keep-projects keeps it)")
    result.summary = summarize(result.rows, spec)
    pl.DataFrame(result.rows, infer_schema_length=None).write_csv(folder / "replay.csv")
    (folder / "summary.json").write_text(json.dumps(result.summary, indent=2), encoding="utf-8")
    from driftloop.orchestration.replay_html import render

    (folder / "replay.html").write_text(render(result.rows, result.summary, spec), encoding="utf-8")
    return result


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _read_raw(path: Path, spec: Spec) -> pl.DataFrame:
    """Every value as text, as a raw file holds it."""
    if not path.is_file():
        raise ProjectError(f"replay: {path} is not a file; pass the historical data file")
    if path.suffix == ".parquet":
        return pl.read_parquet(path).cast(pl.String)
    opts = spec.primary.csv
    return pl.read_csv(
        path,
        separator=opts.separator,
        quote_char=opts.quote_char,
        has_header=opts.has_header,
        new_columns=list(opts.names) if opts.names else None,
        skip_rows=opts.skip_rows,
        infer_schema=False,
        encoding="utf8-lossy" if opts.encoding.lower() not in ("utf-8", "utf8") else "utf8",
    )


def _replay_policy(
    name: str,
    spec: Spec,
    spec_text: str,
    parts: list[pl.DataFrame],
    project: Path,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    from driftloop.orchestration.loop import run_pass

    project.mkdir(parents=True, exist_ok=True)
    retrain = POLICIES[name]
    if name == "triggered":
        retrain = {**spec.retrain.model_dump(mode="json"), **retrain}
    Layout(project).spec.write_text(policy_spec(spec_text, project, retrain))
    own = load_spec(project)
    raw = Layout(project).raw / own.primary.name
    raw.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _land(parts[0], raw, 0, own)
    first = run_pass(project, wait=False)
    if first.failed:
        raise ProjectError(f"replay ({name}): the initial window failed: {first.failed[0].error}")
    scorer = _Scorer(project, own)
    rows: list[dict[str, Any]] = []
    for k, part in enumerate(parts[1:], start=1):
        version, metrics, scored = scorer.score(part)
        _land(part, raw, k, own)
        after = run_pass(project, wait=False)
        trained = [r for r in after.reports if r.stage == "train" and r.outcome == "ran"]
        decided = [r for r in after.reports if r.stage == "promote" and r.outcome == "ran"]
        decision = decided[0].manifest["decision"]["decision"] if decided else None
        rows.append(
            {
                "policy": name,
                "batch": k,
                "rows": part.height,
                "scored_rows": scored,
                "champion": version,
                **metrics,
                "retrained": bool(trained),
                "promoted": decision == "promoted",
                "reason": after.retrain,
            }
        )
    retrains = sum(1 for r in rows if r["retrained"])
    say(
        f"  {name}: {len(rows)} batches, {retrains} retrain(s), "
        f"{time.perf_counter() - started:.0f}s"
    )
    return rows


def _land(part: pl.DataFrame, folder: Path, k: int, spec: Spec) -> None:
    """A batch as a raw file, written under a temporary name and renamed (a complete file)."""
    target = folder / f"replay-{k:05d}.csv"
    tmp = folder / f".{target.name}.tmp"
    part.write_csv(tmp, separator=spec.primary.csv.separator)
    tmp.rename(target)


class _Scorer:
    """The champion of the moment, scoring a batch through the server's own path."""

    def __init__(self, project: Path, spec: Spec) -> None:
        self.project = project
        self.spec = spec
        self.layout = Layout(project)
        self.models: dict[str, Any] = {}

    def score(self, part: pl.DataFrame) -> tuple[str, dict[str, float], int]:
        from driftloop.core.state import StateDB
        from driftloop.models import cache as model_cache
        from driftloop.models.metrics import score
        from driftloop.monitoring.stage import recorded_champion
        from driftloop.serving.model import ServedModel

        with StateDB(self.layout.state_db, url=self.spec.state.url) as db:
            version = recorded_champion(db, self.spec.name)
        if version is None:
            raise ProjectError("replay: the initial window trained no champion")
        model = self.models.get(version)
        if model is None:
            from driftloop.models.registry import open_registry

            registry = open_registry(self.spec, self.layout)
            entry = model_cache.fetch(registry, self.layout, version)
            model = ServedModel.load(
                self.spec.name,
                version,
                entry / model_cache.PACKAGE,
                unknown_category="reject",  # rows prep would quarantine are not scored
                compiled=entry / model_cache.COMPILED,
            )
            self.models[version] = model
        columns = list(model.contract.columns)
        texts = [{c: row.get(c) for c in columns} for row in part.iter_rows(named=True)]
        scored = model.score(texts)
        truth = _labels(part, self.spec)[scored.accepted]
        keep = truth.is_not_null().to_numpy()
        labels = scored.labels[keep]
        proba = scored.proba[keep] if scored.proba is not None else None
        if not keep.any():
            return version, {}, 0
        y = truth.filter(truth.is_not_null()).to_numpy()
        if self.spec.task == "classification":
            metrics = score(self.spec, y.astype(object), labels, proba, model.classes)
        else:
            metrics = score(self.spec, y.astype(float), labels.astype(float))
        return version, {k: float(v) for k, v in metrics.items()}, int(keep.sum())


def _labels(part: pl.DataFrame, spec: Spec) -> pl.Series:
    """The target as prep parses it (text trimmed, the contract's type)."""
    from driftloop.prep.rules import parsed

    rule = spec.contract.columns[spec.target]
    raw = part.select(pl.col(spec.target).str.strip_chars())
    value = raw.select(parsed(spec.target, rule)).to_series()
    return value.cast(pl.String) if spec.task == "classification" else value.cast(pl.Float64)


def summarize(rows: list[dict[str, Any]], spec: Spec) -> dict[str, dict[str, Any]]:
    """Per policy: row-weighted mean of each metric, retrains and promotions."""
    out: dict[str, dict[str, Any]] = {}
    metrics = sorted({k for r in rows for k in r if k in _METRICS})
    for name in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == name]
        weighted: dict[str, float | None] = {}
        for m in metrics:
            pairs = [
                (r[m], r["scored_rows"])
                for r in mine
                if r.get(m) is not None and not math.isnan(r[m])
            ]
            total = sum(w for _, w in pairs)
            weighted[m] = sum(v * w for v, w in pairs) / total if total else None
        out[name] = {
            "batches": len(mine),
            "retrains": sum(r["retrained"] for r in mine),
            "promotions": sum(r["promoted"] for r in mine),
            "metrics": weighted,
            "primary_metric": spec.metric,
        }
    return out


_METRICS = ("accuracy", "f1", "roc_auc", "average_precision", "log_loss", "rmse", "mae", "r2")
