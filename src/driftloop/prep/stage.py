"""The edge of the prep stage: place a batch's files, read them, run the pure prep plan, and
write processed rows and quarantine atomically with their manifests.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from driftloop import __version__
from driftloop.core.errors import (
    NewLabelError,
    QuarantineLimitError,
    StageError,
    StaleBatchError,
)
from driftloop.core.events import ContractChangeProposed
from driftloop.core.layout import (
    COMPRESSION,
    DATA_FILE,
    Layout,
    atomic_output,
    is_complete,
    parquet_rows,
    retract,
    seal,
)
from driftloop.core.manifests import PrepManifest
from driftloop.core.rawstore import CHUNK, RawStore, raw_store
from driftloop.core.spec import SourceSpec, Spec
from driftloop.core.stage import Context, StageCall, StageDef, Work, run_key
from driftloop.core.state import Batch, RawFile, StateDB
from driftloop.core.storage import candidate_files, placement
from driftloop.core.text import shown
from driftloop.prep import PrepPlan, SourceRead, plan_prep, read_raw, rows_per_file
from driftloop.prep.contract import imputation_report
from driftloop.prep.core import RULES, quarantine_reasons, quarantined_rows, reason_lines
from driftloop.prep.notes import new_values, outliers
from driftloop.prep.read import FILE, ROW, STREAM_MIN_BYTES, RawRead
from driftloop.prep.rules import POLARS_TYPES, column_rules

log = logging.getLogger(__name__)


PREP_VERSION = "1"


PREP_SECTIONS = (
    "sources",
    "contract",
    "cleaning",
    "quarantine",
    "target",
    "time_column",
    "id_column",
)


Placed = tuple[RawFile, str | None]  # a ledger file and the spec source it belongs to now


def place_files(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    batch: Batch,
    *,
    placed: Mapping[str, str] | None = None,
    files: list[RawFile] | None = None,
) -> list[Placed]:
    """The files a batch's prep reads, each with its source under the current spec.

    A file belongs to the source whose glob matches it now (so renaming a source keeps its
    files), else to the source it was ingested for, else to none (it is quarantined). The
    batch's primary files come first, then every file of the joined sources so far.
    ``placed`` (:func:`driftloop.core.storage.placement`) and ``files`` (the batch's ledger
    files) let a pass read them once for all its batches.
    """
    matched = placement(candidate_files(spec, layout)) if placed is None else placed
    names = {s.name for s in spec.sources}

    def source_of(f: RawFile) -> str | None:
        return matched.get(f.path) or (f.source if f.source in names else None)

    own_files = db.batch_files(batch.batch_id) if files is None else files
    own = [(f, source_of(f)) for f in own_files]
    joined = {s.name for s in spec.sources[1:]}
    if not joined:  # one source: no joined files to add
        return own
    history = [(f, source_of(f)) for f in db.files_until(batch.seq)]
    return [p for p in own if p[1] not in joined] + [p for p in history if p[1] in joined]


FILES_BY_BATCH = "files_by_batch"  # a Context memo: the whole ledger by batch, read at once


def batch_files(ctx: Context, batch_id: str) -> list[RawFile]:
    """A batch's ledger files: from the whole ledger when a caller about to key many batches
    read it at once (``ctx.once(FILES_BY_BATCH, db.files_by_batch)``), else one query."""
    by_batch = ctx.memo.get(FILES_BY_BATCH)
    return by_batch.get(batch_id, []) if by_batch is not None else ctx.db.batch_files(batch_id)


def work(ctx: Context, call: StageCall) -> Work:
    """A batch's prep: its key from the files it reads (by content) and the spec sections."""
    spec, layout, db = ctx.spec, ctx.layout, ctx.db
    batch = db.batch(str(call.batch_id))
    placed_files = place_files(
        spec,
        layout,
        db,
        batch,
        placed=ctx.once("placement", lambda: placement(candidate_files(spec, layout))),
        files=batch_files(ctx, batch.batch_id),
    )
    key = run_key(
        "prep",
        PREP_VERSION,
        spec.section_hash(*PREP_SECTIONS),
        [f"{source}:{f.sha256}" for f, source in placed_files],
    )

    def run(started: float) -> dict[str, Any]:
        return _run_prep(spec, layout, db, batch, placed_files, key, started)

    return Work(key, layout.processed / batch.batch_id, run, batch.batch_id)


STAGE = StageDef(
    "prep",
    per_batch=True,
    work=work,
    help="validate, clean and join a batch: processed rows, quarantine with reasons",
)


def _read(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    f: RawFile,
    source: SourceSpec | None,
    threshold: int | None,
    copies: Path,
) -> RawRead:
    """Read a ledger file, after checking it is still the content that was ingested.

    A file of a store without local paths (S3) is first copied into ``copies`` (a folder of
    this prep's own, removed after it), hashed while it streams: Polars and pyarrow then read
    a local file, and the copy is the content the ledger took or it is not read."""
    if source is None:
        return RawRead(
            f.path,
            None,
            error=f"no source in driftloop.yaml matches this file any more (it was ingested "
            f"for source {f.source!r}); add a source whose path matches it",
        )
    unavailable = _unavailable(spec, layout, db, f)
    if unavailable is not None:
        return RawRead(f.path, None, error=unavailable)
    store = raw_store(f.path, layout.root, storage=spec.storage.settings())
    path = store.local_path(f.path)
    if path is None:
        copied = _copy(store, f, copies)
        if isinstance(copied, str):
            return RawRead(f.path, None, error=copied)
        path = copied
    return read_raw(path, source, f.path, stream_min_bytes=threshold)


def _copy(store: RawStore, f: RawFile, copies: Path) -> Path | str:
    """The ledger file's content in a local file (named by its hash), or why not."""
    target = copies / f.sha256
    if target.is_file():  # a file read twice in one prep (a joined source's): copied once
        return target
    copies.mkdir(parents=True, exist_ok=True)
    partial = copies / f".{f.sha256}.part"
    digest = hashlib.sha256()
    try:
        with store.open(f.path) as body, partial.open("wb") as out:
            while block := body.read(CHUNK):
                digest.update(block)
                out.write(block)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        return "the file is gone since it was ingested (no such object)"
    if digest.hexdigest() != f.sha256:
        partial.unlink()
        return _changed(f.sha256, digest.hexdigest())
    partial.rename(target)
    return target


def _unavailable(spec: Spec, layout: Layout, db: StateDB, f: RawFile) -> str | None:
    """Why a ledger file's content, as it was ingested, cannot be read again, or None: the
    file is gone, or it changed in place (its size and time are compared with what was
    hashed at ingest; it is hashed again only when they differ)."""
    store = raw_store(f.path, layout.root, storage=spec.storage.settings())  # a key names its store
    try:
        obj = store.stat(f.path)
    except OSError as exc:
        return f"the file is gone since it was ingested ({exc.strerror or exc})"
    if db.known_sighting(f.path, obj.size, obj.mtime_ns) == f.sha256:
        return None
    try:
        now = store.sha256(f.path)
    except OSError as exc:
        return f"the file cannot be read again ({exc.strerror or exc})"
    if now == f.sha256:
        db.record_sighting(f.path, obj.size, obj.mtime_ns, now)
        return None
    return _changed(f.sha256, now)


def _changed(ingested: str, now: str) -> str:
    return (
        f"the file changed since it was ingested (sha256 {ingested[:12]}..., now "
        f"{now[:12]}...); raw files must not be modified in place: land changed data as a "
        "new file"
    )


STALE = "is stale:"  # in a stale batch's failure, after "batch <id> " (status finds it)


def _stale(
    spec: Spec, layout: Layout, db: StateDB, batch: Batch, files: list[Placed]
) -> str | None:
    """Why a batch that has committed outputs cannot be prepared again, or None.

    Its outputs were built from raw files one of which is now gone or changed: a new prep
    would lose those rows (and the withdrawal of a failed batch's outputs would delete the
    only copy of them), so the outputs are kept, the batch is reported stale, and nothing
    is written."""
    if not is_complete(layout.processed / batch.batch_id):
        return None  # nothing built yet: such a file is quarantined with its reason
    missing = [
        (f.path, why)
        for f, source in files
        if source is not None and (why := _unavailable(spec, layout, db, f)) is not None
    ]
    if not missing:
        return None
    path, why = missing[0]
    more = f" (and {len(missing) - 1} more file(s))" if len(missing) > 1 else ""
    b = batch.batch_id
    return (
        f"batch {b} {STALE} it cannot be prepared again under the current driftloop.yaml "
        f"because its raw file {shown(path)}{more} cannot be read as it was ingested: {why}. "
        "Its processed rows and features from the earlier run are kept, nothing was "
        "deleted; no new model is trained until this is resolved. To rebuild it, put the "
        f"file back with the content it had and run 'driftloop batches retry {b}'; to train "
        f"on its rows as they were prepared before, run 'driftloop batches dismiss {b} "
        "--reason TEXT'"
    )


def _plan(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    batch: Batch,
    files: list[Placed],
    copies: Path,
    *,
    exact: bool,
) -> PrepPlan:
    sources = {s.name: s for s in spec.sources}
    threshold = None if exact else STREAM_MIN_BYTES
    reads = [
        SourceRead(
            sources.get(name or "", spec.primary),  # an unplaced file is reported as primary
            f.sha256,
            _read(spec, layout, db, f, sources.get(name or ""), threshold, copies),
            in_batch=f.batch_id == batch.batch_id,
        )
        for f, name in files
    ]
    return plan_prep(reads, spec)


def _sink(plan: PrepPlan, good: Path, bad: Path, dups: Path) -> dict[str, int]:
    """Run the outputs of the plan in one streaming pass over the raw data.

    Returns how many kept values each imputation rule filled.
    """
    filled = good.parent / "filled.parquet"
    raw_bad = bad.with_name(f".raw-{bad.name}")  # inside the output's temporary folder
    sinks = [
        plan.good.sink_parquet(good, lazy=True, compression=COMPRESSION),
        plan.bad.sink_parquet(raw_bad, lazy=True, compression=COMPRESSION),
        plan.duplicates.sink_parquet(dups, lazy=True, compression=COMPRESSION),
    ]
    if plan.fills:
        sinks.append(plan.filled.sink_parquet(filled, lazy=True))
    pl.collect_all(sinks, engine="streaming")
    # A second, small pass: each bad row gets the reasons it was set aside for.
    quarantined_rows(pl.scan_parquet(raw_bad), plan).sink_parquet(bad, compression=COMPRESSION)
    raw_bad.unlink()
    if not plan.fills:
        return {}
    counts: dict[str, int] = pl.read_parquet(filled).row(0, named=True)
    filled.unlink()
    return counts


def _run_prep(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    batch: Batch,
    files: list[Placed],
    key: str,
    started: float,
) -> dict[str, Any]:
    """Plan, run and write one batch's prep; raise after writing quarantine if it fails."""
    stale = _stale(spec, layout, db, batch, files)
    if stale is not None:  # before any output is touched: the earlier one is kept
        raise StaleBatchError(stale)
    failure: str | None = None
    # Processed is the outer context: quarantine (inner) is published first, so processed
    # rows never appear without their quarantine beside them.
    with (
        # local copies of files from a store without local paths, removed after the prep:
        # in this process's temporary folder (TMPDIR), never in the project folder, which a
        # Dask worker on another machine may hold read-only (its code only)
        tempfile.TemporaryDirectory(prefix="raw-copies-") as copied,
        atomic_output(layout.processed / batch.batch_id) as ptmp,
        atomic_output(layout.quarantine / batch.batch_id) as qtmp,
    ):
        copies = Path(copied)
        good, bad, dups = ptmp / DATA_FILE, qtmp / "rows.parquet", qtmp / "duplicates.parquet"
        plan = _plan(spec, layout, db, batch, files, copies, exact=False)
        try:
            filled = _sink(plan, good, bad, dups)
        except pl.exceptions.ComputeError:
            if not plan.streamed:
                raise
            # A row the streaming reader cannot take (too many fields, a broken quote):
            # read every file again with the exact reader, which sets such rows aside.
            log.info("batch %s: streaming read failed; re-reading exactly", batch.batch_id)
            plan = _plan(spec, layout, db, batch, files, copies, exact=True)
            filled = _sink(plan, good, bad, dups)
        check_output_schema(pl.scan_parquet(good), spec)
        ok, quarantined, duplicate = (parquet_rows(p) for p in (good, bad, dups))
        primary = [e for e in plan.inputs if e["source"] == spec.primary.name]
        if len(primary) == 1:  # every output row is its row: no scan of the outputs needed
            per_file = {primary[0]["path"]: ok + quarantined + duplicate}
        else:
            per_file = rows_per_file([pl.scan_parquet(p) for p in (good, bad, dups)])
        for entry in primary:
            entry["rows"] = per_file.get(entry["path"], 0)
        secondary_bad = len(_write_secondary_bad(plan, qtmp))
        counts = {
            "rows_in": ok + quarantined + duplicate,
            "rows_ok": ok,
            "rows_quarantined": quarantined,
            "rows_duplicate": duplicate,
        }
        # rows_in counts the primary source's rows; a joined source's unusable rows are
        # quarantined apart (secondary_rows.parquet) and counted here:
        secondary = {"secondary_rows_quarantined": secondary_bad}
        manifest: dict[str, Any] = {
            "stage": "prep",
            "stage_version": PREP_VERSION,
            "code_version": __version__,
            "run_key": key,
            "batch_id": batch.batch_id,
            "spec_hash": spec.section_hash(*PREP_SECTIONS),
            "inputs": plan.inputs,
            "files_quarantined": plan.files_quarantined,
            **counts,
            **secondary,
            "imputed": imputation_report(dict(spec.cleaning.impute), plan.fills, filled),
            "warnings": plan.warnings,
            "streamed": plan.streamed,
            "schema": {c: str(t) for c, t in pl.read_parquet_schema(good).items()},
            "quarantine_reasons": _reasons(bad) if quarantined else [],
        }
        kept = pl.scan_parquet(good)
        noticed = {"new_values": new_values(kept, spec), "outliers": outliers(kept, spec)}
        manifest.update({k: v for k, v in noticed.items() if v})
        manifest = PrepManifest.model_validate(manifest).as_json()  # its shape, checked
        if quarantined or duplicate or secondary_bad or plan.files_quarantined:
            seal(qtmp, _quarantine_manifest(batch, manifest))
        quarantine = layout.relative(layout.quarantine / batch.batch_id)
        label = _new_label_failure(spec, batch.batch_id, bad, quarantine) if quarantined else None
        failure = label or _limit_failure(spec, batch.batch_id, counts, plan, quarantine)
        if failure is not None and manifest["quarantine_reasons"]:
            failure += "\n" + "\n".join(reason_lines(manifest["quarantine_reasons"]))
        if failure is None:
            manifest["timings"] = {"total_s": round(time.perf_counter() - started, 4)}
            seal(ptmp, manifest)
    if failure is not None:
        retract(layout.features / batch.batch_id)  # built from processed rows now withdrawn
        raise (NewLabelError if label else QuarantineLimitError)(failure)
    if manifest.get("new_values"):
        db.record(ContractChangeProposed(batch_id=batch.batch_id, changes=manifest["new_values"]))
    return manifest


def _new_label_failure(spec: Spec, batch_id: str, bad: Path, quarantine: str) -> str | None:
    """A target label the contract does not list stops the batch: a new class must be a
    decision. The rows wait in quarantine; the message names the labels and one example."""
    target = spec.contract.columns[spec.target]
    if target.allowed is None:
        return None
    [isin] = [
        r
        for r in column_rules(spec.target, target, max_length=spec.contract.max_field_length)
        if r.name.startswith("isin(")
    ]
    rows = (
        pl.scan_parquet(bad)
        .filter(pl.col(RULES).list.contains(isin.label))
        .select(spec.target, FILE, ROW)
        .collect()
    )
    if rows.height == 0:
        return None
    labels = rows.get_column(spec.target).value_counts(sort=True)
    shown = ", ".join(f"{v!r} ({n} row(s))" for v, n in labels.rows()[:5])
    first = rows.row(0, named=True)
    return (
        f"batch {batch_id}: {rows.height} row(s) have a target label that contract.columns."
        f"{spec.target}.allowed {list(target.allowed)} does not list: {shown}; for example "
        f"{first[FILE]} record {first[ROW]}: {spec.target}={first[spec.target]!r}. A new class "
        f"must be a decision: if it is real, add it to contract.columns.{spec.target}.allowed "
        f"in driftloop.yaml and run again (the rows are in {quarantine}/rows.parquet)"
    )


def _write_secondary_bad(plan: PrepPlan, folder: Path) -> pl.DataFrame:
    """Joined sources' unusable rows, written beside the batch's quarantined rows."""
    if not plan.secondary_bad:
        return pl.DataFrame()
    rows = pl.concat(plan.secondary_bad, how="diagonal_relaxed")
    rows.write_parquet(folder / "secondary_rows.parquet", compression=COMPRESSION)
    return rows


def _limit_failure(
    spec: Spec, batch_id: str, counts: dict[str, int], plan: PrepPlan, quarantine: str
) -> str | None:
    if counts["rows_in"] == 0 and plan.primary_files == 0:
        return None  # nothing for the primary source in this batch (a joined source's update)
    if counts["rows_in"] == 0:
        files = plan.files_quarantined
        first = f"; {shown(files[0]['path'])}: {shown(files[0]['error'])}" if files else ""
        more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
        return (
            f"batch {batch_id}: no usable rows; every file was quarantined{first}{more} "
            f"(see {quarantine}/manifest.json)"
        )
    share = counts["rows_quarantined"] / counts["rows_in"]
    if share > spec.quarantine.max_bad_share:
        return (
            f"batch {batch_id}: {counts['rows_quarantined']} of {counts['rows_in']} "
            f"rows ({share:.1%}) broke the contract, above quarantine.max_bad_share "
            f"{spec.quarantine.max_bad_share:.0%}; read the reasons in "
            f"{quarantine}/rows.parquet, then fix the data or the "
            "contract, or raise the limit"
        )
    return None


def _reasons(bad: Path) -> list[dict[str, Any]]:
    return quarantine_reasons(pl.scan_parquet(bad))


def _quarantine_manifest(batch: Batch, prep: dict[str, Any]) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        "run_key": prep["run_key"],
        "rows_quarantined": prep["rows_quarantined"],
        "rows_duplicate": prep["rows_duplicate"],
        "secondary_rows_quarantined": prep["secondary_rows_quarantined"],
        "files_quarantined": prep["files_quarantined"],
        "reasons": prep["quarantine_reasons"],
    }


def check_output_schema(frame: pl.LazyFrame, spec: Spec) -> None:
    """Every contract column is in what prep wrote, with the contract's type."""
    have = frame.collect_schema()
    wrong = {
        name: str(have.get(name))
        for name, rule in spec.contract.columns.items()
        if have.get(name) != POLARS_TYPES[rule.dtype]
    }
    if wrong:
        raise StageError(
            f"processed output does not match the contract's types ({wrong}); this is a bug "
            "in driftloop, please report it with the spec"
        )
