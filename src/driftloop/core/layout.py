"""Where things live in a project folder, and the atomic-output discipline.

:class:`Layout` is the only place that spells a project path: every other module asks it.
Stage outputs (processed, features, quarantine, batch checks, reports) live under its
``output_root``: ``data/`` here, or the spec's ``outputs: s3://...`` (then they are
:class:`~driftloop.core.urls.ObjectUrl` addresses, which join like paths).

A stage writes its output into a place of its own run, writes ``manifest.json`` and then
``_SUCCESS`` last, and commits it (on this machine: a hidden temporary folder renamed into
place). Readers ignore any output without ``_SUCCESS``. The functions below are that
protocol for any output address; :mod:`driftloop.core.outputs` implements it per store.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from driftloop.core import s3client
from driftloop.core.outputs import SUCCESS, Address, output_store
from driftloop.core.urls import ObjectUrl

if TYPE_CHECKING:
    import polars as pl

# A stage output's address: a folder of this machine, or a URL on an object store.
Output = Path | ObjectUrl


@dataclass(frozen=True)
class Layout:
    """The folders of one project."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "driftloop.yaml"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @cached_property
    def output_root(self) -> Output:
        """Where processed, features and quarantine live: the spec's ``outputs:`` URL
        (``s3://bucket/prefix``), else ``data/`` in the project folder. Read from the spec
        file here, so that every reader of a project sees the same place."""
        url, storage = _spec_outputs(self.spec)
        if url is None:
            return self.root / "data"
        # every address under the root reaches S3 as the spec's storage section says
        s3client.bind(url, s3client.S3Settings.of(storage))
        return ObjectUrl(url)

    @property
    def on_object_store(self) -> bool:
        return isinstance(self.output_root, ObjectUrl)

    @property
    def processed(self) -> Output:
        return self.output_root / "processed"

    @property
    def features(self) -> Output:
        return self.output_root / "features"

    @property
    def quarantine(self) -> Output:
        return self.output_root / "quarantine"

    @property
    def promotions(self) -> Path:
        """The promote stage's decisions, one folder per training decided."""
        return self.root / "data" / "promotions"

    @property
    def monitoring(self) -> Path:
        return self.root / "data" / "monitoring"

    @property
    def predictions(self) -> Output:
        """What /predict saw and answered (parquet, partitioned by date; under the outputs
        root, so that a monitor elsewhere reads what serving logged:
        :mod:`driftloop.core.logparts`)."""
        return self.output_root / "monitoring" / "predictions"

    @property
    def feedback(self) -> Output:
        """True labels sent to /feedback, by request id (parquet, partitioned by date; under
        the outputs root, like the predictions)."""
        return self.output_root / "monitoring" / "feedback"

    @property
    def batch_checks(self) -> Output:
        """Each new batch's check against the champion (a stage output per batch; under the
        outputs root, like processed and features)."""
        return self.output_root / "monitoring" / "batches"

    @property
    def reports(self) -> Output:
        """Monitoring reports (json + html; under the outputs root)."""
        return self.output_root / "monitoring" / "reports"

    @property
    def models(self) -> Path:
        """The train stage's outputs, one folder per training run key."""
        return self.root / "data" / "models"

    @property
    def replay(self) -> Path:
        """``driftloop replay`` results, one folder per replay."""
        return self.root / "data" / "replay"

    @property
    def outputs(self) -> tuple[Output, ...]:
        """The folders of stage outputs (committed by the atomic-output protocol)."""
        return (
            self.processed,
            self.features,
            self.quarantine,
            self.batch_checks,
            self.models,
            self.promotions,
        )

    @property
    def mlflow_db(self) -> Path:
        """The embedded MLflow tracking store and registry (SQLite)."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """The embedded MLflow store's artifacts (registered models)."""
        return self.root / "mlartifacts"

    @property
    def serving_logs(self) -> Path:
        """Logs of servers started for the project (the demo's, ``driftloop up``'s)."""
        return self.state_dir / "serving"

    @property
    def model_cache(self) -> Path:
        """Registered model packages kept on this machine, so serving starts without a download."""
        return self.state_dir / "models"

    @property
    def state_dir(self) -> Path:
        return self.root / ".driftloop"

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def champion_moved(self) -> Path:
        """Rewritten whenever the champion alias moves (promotion/alias.py): servers on this
        machine watch it to follow a promotion at once (serving/champion.py)."""
        return self.state_dir / "champion-moved"

    def source_pattern(self, source: str, suffix: str | None) -> str:
        """The glob a new source's files land under: ``data/raw/<source>/*.<suffix>``, or
        every file there (``*``) without a suffix."""
        tail = "*" if suffix is None else f"*.{suffix}"
        return f"{self.relative(self.raw / source)}/{tail}"

    def relative(self, path: Output) -> str:
        """A path as the user sees it: relative to the project when inside it (a URL as
        it is)."""
        if isinstance(path, str):
            return str(path)
        try:
            # abspath, not resolve: a raw file may be a symlink to data kept elsewhere
            return path.absolute().relative_to(self.root.absolute()).as_posix()
        except ValueError:
            return str(path)


# The commit protocol, for any output address: each call goes to the store the address
# belongs to (driftloop.core.outputs; a rename on this machine).


def _spec_outputs(spec: Path) -> tuple[str | None, object]:
    """The ``outputs:`` URL of a spec file, or None (no file, no key, or not a URL: loading
    the spec reports what is wrong with it), and its ``storage:`` section."""
    try:
        text = spec.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, None
    if "outputs:" not in text:  # the common case: no YAML parse
        return None, None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    value = data.get("outputs")
    if isinstance(value, str) and value.lower().startswith("s3://"):
        return value.rstrip("/"), data.get("storage")
    return None, None


def output_file(output_dir: Output, name: str) -> Address:
    """Where a committed output's file is read from: a path here, the committed attempt's
    URL on an object store (Polars reads both)."""
    return output_store(output_dir).file(output_dir, name)


def scan_output(output_dir: Output, name: str = "data.parquet") -> pl.LazyFrame:
    """A committed output's Parquet file, lazily (on S3: where the spec's ``storage:``
    section and the AWS environment say, as boto3 reaches it)."""
    return scan_parquet(output_file(output_dir, name))


def scan_parquet(path: Address) -> pl.LazyFrame:
    """A Parquet file here or on S3, lazily, with the storage options its address needs."""
    import polars as pl

    return pl.scan_parquet(path, storage_options=storage_options(path))


def storage_options(path: Address) -> dict[str, str] | None:
    """Polars' ``storage_options`` for an address: None for a path, or for S3 where the
    AWS environment alone applies."""
    if isinstance(path, Path) or not str(path).lower().startswith("s3://"):
        return None
    return s3client.polars_options(str(path))


def is_complete(output_dir: Address) -> bool:
    """The output is committed (``_SUCCESS`` published): readers trust nothing else."""
    return output_store(output_dir).is_committed(output_dir)


def committed_outputs(parent: Output) -> set[str]:
    """The names of the committed outputs in ``parent`` (a stage's folder): a scan here, one
    paginated listing on an object store (not a request per output)."""
    store = output_store(parent)
    listing = getattr(store, "committed", None)
    if listing is not None:
        found: set[str] = listing(parent)
        return found
    if not isinstance(parent, Path) or not parent.is_dir():
        return set()
    return {e.name for e in os.scandir(parent) if os.path.exists(f"{e.path}/{SUCCESS}")}  # noqa: PTH110


def read_manifest(output_dir: Address) -> dict[str, Any]:
    return output_store(output_dir).read_manifest(output_dir)


def atomic_output(final_dir: Address) -> AbstractContextManager[Path]:
    """Yield a place of this run's own; when the caller sealed it, commit it as ``final_dir``.

    The caller writes data files into it and then calls :func:`seal`. An existing
    ``final_dir`` is the output of an earlier run with another key, so it is stale either
    way: it is replaced only once the new output is complete (a reader never sees a
    half-written output), and retracted when the new run publishes nothing (left unsealed,
    or an exception).
    """
    return output_store(final_dir).attempt(final_dir)


def retract(output_dir: Address) -> None:
    """Withdraw a published output."""
    output_store(output_dir).retract(output_dir)


def seal(output_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, then ``_SUCCESS`` last."""
    output_store(output_dir).seal(output_dir, manifest)


def sweep_temporaries(parent: Address) -> None:
    """Remove leftovers of a run that was killed before its commit."""
    output_store(parent).sweep(parent)


DATA_FILE = "data.parquet"

# LZ4 over zstd: about 1.5 s less per 5M rows written, for files about a third larger.
COMPRESSION: Literal["lz4"] = "lz4"


def parquet_rows(path: Address) -> int:
    """The rows of a Parquet file, from its metadata."""
    import polars as pl

    return int(scan_parquet(path).select(pl.len()).collect().item())
