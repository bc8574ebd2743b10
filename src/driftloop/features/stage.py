"""The edge of the features stage: processed rows in, model columns out (stored as a delta
when the computed columns are known), and the one reader of that output.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import polars as pl

from driftloop import __version__
from driftloop.core import manifests
from driftloop.core.errors import (
    FeatureError,
    StageError,
    TransientError,
    first_line,
)
from driftloop.core.layout import (
    COMPRESSION,
    DATA_FILE,
    Layout,
    atomic_output,
    is_complete,
    output_file,
    parquet_rows,
    retract,
    scan_output,
    seal,
)
from driftloop.core.manifests import FeaturesManifest, PrepManifest
from driftloop.core.spec import Spec
from driftloop.core.stage import Context, Skip, StageCall, StageDef, Work, run_key
from driftloop.features.compute import (
    features_with_delta,
    load_user_function,
    user_module_path,
)

FEATURES_VERSION = "1"


FEATURES_SECTIONS = ("features", "target", "time_column", "id_column")


def work(ctx: Context, call: StageCall) -> Work | Skip:
    """A batch's features: keyed by the processed output's run key, the features sections
    and the user's feature module."""
    spec, layout = ctx.spec, ctx.layout
    batch = ctx.db.batch(str(call.batch_id))
    in_dir = layout.processed / batch.batch_id
    if not is_complete(in_dir):
        retract(layout.features / batch.batch_id)  # built from processed rows now withdrawn
        return Skip("no processed data", batch.batch_id)
    prep_key = ctx.current().get(("prep", batch.batch_id))
    if prep_key is None:  # not known from the state database: the manifest says
        prep_key = manifests.read(in_dir, PrepManifest).run_key
    user_code = ctx.once("user_code", lambda: user_code_hash(spec, layout.root))
    key = run_key(
        "features",
        FEATURES_VERSION,
        spec.section_hash(*FEATURES_SECTIONS) + user_code,
        [prep_key],
    )
    out_dir = layout.features / batch.batch_id

    def run(started: float) -> dict[str, Any]:
        if manifests.read(in_dir, PrepManifest).run_key != prep_key:
            # another worker published newer processed rows since the key was computed
            raise TransientError(
                f"{layout.relative(in_dir)} changed while its features were planned; "
                "they are planned again"
            )
        func = (
            load_user_function(spec.features.function, layout.root)
            if spec.features.function
            else None
        )
        with atomic_output(out_dir) as tmp:
            try:
                frame, added = features_with_delta(scan_output(in_dir), spec, func)
                schema = frame.collect_schema()
                # A delta over the processed rows when the computed columns are known: only
                # they are written, and read_features puts them beside the processed ones.
                stored = frame if added is None else frame.select(added)
                stored.sink_parquet(tmp / DATA_FILE, compression=COMPRESSION)
            except pl.exceptions.PolarsError as exc:
                raise FeatureError(
                    f"features for batch {batch.batch_id} failed: {first_line(exc)}; check "
                    "the features section and features.function against the processed columns"
                ) from exc
            manifest = {
                "stage": "features",
                "stage_version": FEATURES_VERSION,
                "code_version": __version__,
                "run_key": key,
                "batch_id": batch.batch_id,
                "spec_hash": spec.section_hash(*FEATURES_SECTIONS),
                "user_code_sha256": user_code or None,
                "inputs": [
                    {
                        "path": layout.relative(in_dir / "manifest.json"),
                        "run_key": prep_key,
                    }
                ],
                # a delta has as many rows as the processed rows it sits beside
                "rows": parquet_rows(
                    tmp / DATA_FILE if added is None else output_file(in_dir, DATA_FILE)
                ),
                "storage": "full" if added is None else "delta",
                "base_columns": [] if added is None else [c for c in schema if c not in added],
                "columns": list(schema),  # in order (the schema mapping is stored sorted)
                "schema": {c: str(t) for c, t in schema.items()},
                "timings": {"total_s": round(time.perf_counter() - started, 4)},
            }
            manifest = FeaturesManifest.model_validate(manifest).as_json()  # its shape, checked
            seal(tmp, manifest)
        return manifest

    return Work(key, out_dir, run, batch.batch_id)


STAGE = StageDef(
    "features",
    per_batch=True,
    work=work,
    help="the feature function over a batch's processed rows: model columns",
)


def read_features(layout: Layout, batch_id: str) -> pl.LazyFrame:
    """The model columns of one batch, whichever way the features stage stored them."""
    out_dir = layout.features / batch_id
    if not is_complete(out_dir):
        raise StageError(
            f"{layout.relative(out_dir)}: no complete features output; run 'driftloop run'"
        )
    manifest = manifests.read(out_dir, FeaturesManifest)
    stored = scan_output(out_dir)
    base_dir = layout.processed / batch_id
    base_key = manifests.read(base_dir, PrepManifest).run_key if is_complete(base_dir) else None
    if base_key != manifest.inputs[0].run_key:
        raise StageError(
            f"{layout.relative(out_dir)} was built from another version of "
            f"{layout.relative(base_dir)}; run 'driftloop run' to bring it up to date"
        )
    if manifest.storage == "full":
        return stored
    base = scan_output(base_dir).select(manifest.base_columns)
    if manifest.base_columns == manifest.columns:
        return base  # the features compute nothing: the processed columns are the features
    return pl.concat([base, stored], how="horizontal").select(manifest.columns)


def user_code_hash(spec: Spec, root: Path) -> str:
    """Hash of the user's feature module file, so editing it re-runs features."""
    if not spec.features.function:
        return ""
    path = user_module_path(spec.features.function, root)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
