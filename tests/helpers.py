"""Small helpers for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

# The bank marketing file (shared datasets) as one source with its contract; callers add
# what they need (a test: ``model: {enabled: false}``; benchmarks/train.py the model).
BANK_SPEC = """
name: bank
task: classification
target: y
sources:
  - name: bank
    path: data/raw/bank/*.csv
    csv: {separator: ";", null_values: ["", unknown]}
contract:
  columns:
    age: {dtype: int, min: 16, max: 110, nullable: false}
    job: {dtype: str}
    marital: {dtype: str, allowed: [married, single, divorced]}
    education: {dtype: str}
    default: {dtype: str, allowed: ["no", "yes"]}
    housing: {dtype: str, allowed: ["no", "yes"]}
    loan: {dtype: str, allowed: ["no", "yes"]}
    contact: {dtype: str, allowed: [telephone, cellular]}
    month: {dtype: str, allowed: [mar, apr, may, jun, jul, aug, sep, oct, nov, dec]}
    day_of_week: {dtype: str, allowed: [mon, tue, wed, thu, fri]}
    duration: {dtype: int, min: 0}
    campaign: {dtype: int, min: 1}
    pdays: {dtype: int, min: 0}
    previous: {dtype: int, min: 0}
    poutcome: {dtype: str}
    emp.var.rate: {dtype: float}
    cons.price.idx: {dtype: float}
    cons.conf.idx: {dtype: float}
    euribor3m: {dtype: float, min: 0}
    nr.employed: {dtype: float}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
features:
  exclude: [duration]
ingest: {settle_seconds: 0, follow_links_outside: true}  # datasets linked in place
"""

# The bike-sharing hourly file as one source; tests add the contract they need.
BIKE_SOURCE = """
name: bike
task: regression
target: cnt
time_column: dteday
sources:
  - name: hours
    path: data/raw/hours/*.csv
"""


# A one-source regression spec with no model, for tests of where data is read from and
# written to; ``{path}`` is the source, and a test appends what it needs (outputs, storage).
TINY_SPEC = """
name: tiny
task: regression
target: y
sources:
  - name: points
    path: {path}
contract:
  columns:
    x: {{dtype: float}}
    y: {{dtype: float}}
ingest: {{settle_seconds: 0}}
model: {{enabled: false}}
"""


def write_spec(project: Path, text: str) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    path = project / "driftloop.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def features_of(project: Path) -> pl.DataFrame:
    """The model columns of the project's only batch, as the features stage stored them."""
    from driftloop.core.layout import Layout
    from driftloop.features.stage import read_features

    [batch] = [
        p.name for p in (project / "data" / "features").iterdir() if not p.name.startswith(".")
    ]
    return read_features(Layout(project), batch).collect()


def link_raw(project: Path, source: str, *files: Path) -> None:
    """Put files into data/raw/<source>/ as symlinks: the raw data is read in place."""
    folder = project / "data" / "raw" / source
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def write_bare_package(
    folder: Path, spec: Any, trained: Any, user_module: Path | None = None
) -> Path:
    """A model package from a fit (``driftloop.train.fit.fit``) with a minimal reference
    profile and no monitoring reference: what the inference and serving tests load."""
    from driftloop.models.package import write_package
    from driftloop.models.profile import reference_profile

    write_package(
        folder,
        spec=spec,
        pipeline=trained.pipeline,
        inputs=trained.inputs,
        categorical=trained.categorical,
        classes=trained.classes,
        user_module=user_module,
        profile=reference_profile(
            trained.split.train.select(trained.inputs),
            holdout_predictions=pl.Series("prediction", [0.5]),
            holdout_metric={},
            seed=0,
        ),
    )
    return folder
