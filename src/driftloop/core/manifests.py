"""What each stage's committed output says about itself: frozen models, one per stage.

A stage builds its manifest as one of these (so a field it forgets or misspells fails at
once, in the stage, not later in a reader), writes it as ``manifest.json`` beside its data,
and readers take it back with :func:`read`. The JSON on disk is the same as before these
models existed, so outputs written by earlier versions still read.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from driftloop.core.layout import Output, read_manifest


class _Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def as_json(self) -> dict[str, Any]:
        """The manifest as written to ``manifest.json``: the fields it was given (an optional
        field never set is left out, as before these models existed)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class RawInput(_Manifest):
    """One raw file a prep run read (``rows``: its rows, for the primary source's files)."""

    path: str
    sha256: str
    source: str
    rows: int | None = None
    from_earlier_batch: bool | None = None  # a joined source's file from an earlier batch


class QuarantinedFile(_Manifest):
    path: str
    sha256: str
    error: str


class PrepManifest(_Manifest):
    stage: Literal["prep"]
    stage_version: str
    code_version: str
    run_key: str
    batch_id: str
    spec_hash: str
    inputs: list[RawInput]
    files_quarantined: list[QuarantinedFile]
    rows_in: int
    rows_ok: int
    rows_quarantined: int
    rows_duplicate: int
    secondary_rows_quarantined: int
    imputed: dict[str, dict[str, Any]]
    warnings: list[str]
    streamed: bool
    columns_schema: dict[str, str] = Field(alias="schema")
    quarantine_reasons: list[dict[str, Any]]
    # kept and reported (prep/notes.py): values new to an open allowed list, outliers
    new_values: list[dict[str, Any]] | None = None
    outliers: list[dict[str, Any]] | None = None
    timings: dict[str, float] | None = None


class FeaturesInput(_Manifest):
    path: str
    run_key: str


class FeaturesManifest(_Manifest):
    stage: Literal["features"]
    stage_version: str
    code_version: str
    run_key: str
    batch_id: str
    spec_hash: str
    user_code_sha256: str | None = None
    inputs: list[FeaturesInput]
    rows: int
    storage: Literal["full", "delta"]
    base_columns: list[str]
    columns: list[str]
    columns_schema: dict[str, str] = Field(alias="schema")
    timings: dict[str, float] | None = None


class MonitorManifest(_Manifest):
    stage: Literal["monitor"]
    run_key: str
    batch_id: str
    champion_version: str
    summary: dict[str, Any]
    paths: dict[str, str] | None = None


class TrainingInput(_Manifest):
    """One batch a training learned from: its features (by run key) and processed rows."""

    batch_id: str
    seq: int
    features: str
    features_run_key: str
    processed: str


class TrainManifest(_Manifest):
    stage: Literal["train"]
    stage_version: str
    code_version: str
    run_key: str
    model: str
    version: str
    run_id: str
    metric: str
    metrics: dict[str, float]
    baseline: dict[str, float]
    split: str
    train_rows: int
    holdout_rows: int
    # whether the served model was fitted again with the holdout (absent: older manifests)
    refit_on_all: bool | None = None
    served_rows: int | None = None  # the rows the served model learned from
    holdout: str | None = None  # the holdout's lineage keys (absent before the gate's stage)
    inputs: list[TrainingInput]
    sections_hash: str
    decision: dict[str, Any] | None = None  # decided inside the train stage (before 0.3)
    timings: dict[str, float] | None = None
    registry_warning: str | None = None  # the registry lost versions (RegistryHistoryLost)


class Decision(_Manifest):
    """A promotion decision: the gate's, a manual promote, or a rollback."""

    model: str
    version: str
    decision: Literal["promoted", "rejected", "manual", "rollback"]
    reason: str
    metric: str | None
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None
    baseline_score: float | None
    actor: str


class PromoteManifest(_Manifest):
    stage: Literal["promote"]
    stage_version: str
    code_version: str
    run_key: str
    model: str
    version: str
    training: str
    train_run_key: str
    decision: Decision
    timings: dict[str, float] | None = None


M = TypeVar("M", bound=_Manifest)


def read(output: Output, kind: type[M]) -> M:
    """A committed output's manifest as its stage's model."""
    return kind.model_validate(read_manifest(output))
