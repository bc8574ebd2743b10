"""The project spec, ``driftloop.yaml``, parsed into frozen pydantic models.

Unknown keys are errors (``extra="forbid"``); every problem in the file is reported at once,
each with its key path and, for a misspelt key, the closest valid name. Loading a spec has no
side effects.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from driftloop.core.errors import SpecError, SpecNotFoundError
from driftloop.core.redact import has_password, redact

SPEC_FILENAME = "driftloop.yaml"

DType = Literal["int", "float", "str", "bool", "date", "datetime"]
DatePart = Literal["year", "quarter", "month", "day", "weekday", "dayofyear", "hour", "minute"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Frozen):
    """How to read a CSV source."""

    separator: str = Field(",", min_length=1, max_length=1)
    quote_char: str | None = Field('"', min_length=1, max_length=1)
    encoding: str = "utf-8"
    null_values: tuple[str, ...] = ("",)
    has_header: bool = True
    # The column names of a file without a header row (has_header: false), in order; without
    # them such a file's columns are column_1, column_2, ...
    names: tuple[str, ...] | None = None
    skip_rows: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _names_without_header(self) -> CsvOptions:
        if self.names is None:
            return self
        if self.has_header:
            raise ValueError(
                "names apply to files without a header row; set has_header: false, or drop "
                "names to use the header's"
            )
        if not self.names or any(not n.strip() for n in self.names):
            raise ValueError("names must list one non-empty name per column")
        dupes = sorted({n for n in self.names if self.names.count(n) > 1})
        if dupes:
            raise ValueError(f"names repeats {dupes}; give each column its own name")
        return self

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {value!r}; use a Python codec name: utf-8, latin-1, cp1252"
            ) from None
        return value


class JoinSpec(_Frozen):
    """How a secondary source joins the primary (first) source."""

    on: tuple[str, ...] = Field(min_length=1)
    how: Literal["left", "inner"] = "left"


class SourceSpec(_Frozen):
    """One place raw files land: a glob under the project folder."""

    name: str
    path: str
    format: Literal["csv", "parquet"] = "csv"
    csv: CsvOptions = CsvOptions()
    join: JoinSpec | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"source name {value!r} must be letters, digits and _ (like 'orders')")
        return value


class PlausibleRange(_Frozen):
    """Where a column's values usually lie (``init`` proposes it from the sample's quartiles).

    A value outside is an outlier: prep counts and reports it per column and keeps the row;
    with ``strict: true`` the row is quarantined instead, like ``min``/``max``.
    """

    min: float | None = None
    max: float | None = None
    strict: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> PlausibleRange:
        if self.min is None and self.max is None:
            raise ValueError("plausible needs a 'min', a 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"plausible min ({self.min}) is greater than max ({self.max})")
        return self


class ColumnContract(_Frozen):
    """What every value of one column must satisfy."""

    dtype: DType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str | int | float | bool, ...] | None = None
    regex: str | None = None
    format: str | None = None  # strptime format for date/datetime; inferred when absent
    # A value outside ``allowed``: "reject" quarantines its row (a list closed on purpose);
    # "report" accepts and scores it, and prep reports it with a proposed spec change (what
    # ``init`` writes for a list it guessed from one sample). Never "report" on the target.
    new_values: Literal["reject", "report"] = "reject"
    plausible: PlausibleRange | None = None  # outlier bounds: reported, or strict

    @model_validator(mode="after")
    def _coherent(self) -> ColumnContract:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if (self.min is not None or self.max is not None) and self.dtype not in ("int", "float"):
            raise ValueError(f"min/max apply to int and float columns, not {self.dtype}")
        if self.regex is not None:
            if self.dtype != "str":
                raise ValueError(f"regex applies to str columns, not {self.dtype}")
            _check_regex(self.regex)
        if self.allowed is not None:
            _check_allowed(self.allowed, self.dtype)
        elif self.new_values == "report":
            raise ValueError("new_values applies to a column with an 'allowed' list; add one")
        if self.plausible is not None and self.dtype not in ("int", "float"):
            raise ValueError(f"plausible applies to int and float columns, not {self.dtype}")
        if self.format is not None:
            if self.dtype not in ("date", "datetime"):
                raise ValueError(f"format applies to date and datetime columns, not {self.dtype}")
            _check_format(self.format)
        return self


def _check_regex(pattern: str) -> None:
    """The pattern must compile for Polars' regex engine (Rust), which checks the rows."""
    import polars as pl

    try:
        pl.Series([""]).str.contains(pattern)
    except pl.exceptions.PolarsError as exc:
        detail = [
            line.strip() for line in str(exc).splitlines() if line.strip().startswith("error")
        ]
        reason = detail[0].removeprefix("error: ") if detail else "invalid pattern"
        raise ValueError(
            f"regex {pattern!r} is not supported: {reason}; use Rust regex syntax "
            "(no look-around or backreferences)"
        ) from None


def _check_allowed(values: tuple[str | int | float | bool, ...], dtype: str) -> None:
    if dtype in ("date", "datetime", "bool"):
        raise ValueError(f"allowed applies to str, int and float columns, not {dtype}")
    for value in values:
        if dtype == "str":
            continue
        try:
            number = float(str(value))
        except ValueError:
            number = None
        if (
            number is None
            or isinstance(value, bool)
            or (dtype == "int" and not number.is_integer())
        ):
            raise ValueError(
                f"allowed value {value!r} is not an {dtype}, as the column's dtype says"
            )


def _check_format(fmt: str) -> None:
    """A strptime format must round-trip a sample moment."""
    import datetime as dt

    sample = dt.datetime(2024, 12, 31, 23, 59, 58)
    try:
        dt.datetime.strptime(sample.strftime(fmt), fmt)
    except ValueError as exc:
        raise ValueError(
            f"format {fmt!r} is not a valid strptime format ({exc}); for example "
            "'%Y-%m-%d %H:%M:%S'"
        ) from None


class ContractSpec(_Frozen):
    """The column contract rows must satisfy to reach ``data/processed``."""

    columns: dict[str, ColumnContract] = Field(min_length=1)
    extra_columns: Literal["reject", "drop"] = "reject"
    max_field_length: int = Field(100_000, ge=1)  # bytes of UTF-8 text in one field


class DedupSpec(_Frozen):
    enabled: bool = True
    subset: tuple[str, ...] | None = None  # None: whole rows


class ImputeSpec(_Frozen):
    strategy: Literal["constant", "mean", "median", "mode"]
    value: str | int | float | bool | None = None

    @model_validator(mode="after")
    def _value_for_constant(self) -> ImputeSpec:
        if self.strategy == "constant" and self.value is None:
            raise ValueError("strategy 'constant' needs a 'value'")
        return self


class CleaningSpec(_Frozen):
    trim_strings: bool = True
    deduplicate: DedupSpec = DedupSpec()
    impute: dict[str, ImputeSpec] = {}


class RatioFeature(_Frozen):
    name: str
    numerator: str
    denominator: str


class BucketFeature(_Frozen):
    column: str
    edges: tuple[float, ...] = Field(min_length=1)
    name: str | None = None

    @field_validator("edges")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"edges must increase strictly, got {list(value)}")
        return value


class FeaturesSpec(_Frozen):
    datetime_parts: dict[str, tuple[DatePart, ...]] = {}
    ratios: tuple[RatioFeature, ...] = ()
    logs: tuple[str, ...] = ()
    buckets: tuple[BucketFeature, ...] = ()
    exclude: tuple[str, ...] = ()  # leakage or id-like columns kept out of model inputs
    function: str | None = None  # "module:function", imported from the project folder

    @field_validator("function")
    @classmethod
    def _module_function(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.]+:\w+$", value):
            raise ValueError(f"function {value!r} must look like 'module:function'")
        if value is not None and not all(
            p.isidentifier() for p in value.partition(":")[0].split(".")
        ):
            raise ValueError(
                f"function {value!r}: the module must name a file inside the project folder "
                "by its dotted path there, without a leading dot (features.py: "
                "'features:build'; pkg/feats.py: 'pkg.feats:build'); a module outside the "
                "project would run here but not be packaged with the model"
            )
        return value


class QuarantineSpec(_Frozen):
    max_bad_share: float = Field(0.5, ge=0.0, le=1.0)


class EventsSpec(_Frozen):
    """Bucket notifications that wake the loop: an SQS queue that S3 (directly, through SNS
    or through EventBridge) sends object events to. Events are hints; a listing of the
    sources every ``listing_seconds`` finds what a lost notification missed."""

    queue: str  # sqs://<queue name>, or the queue's URL (https://sqs.<region>.../<account>/<name>)
    listing_seconds: float = Field(300.0, gt=0.0)  # the reconciling listing's period
    wait_seconds: int = Field(20, ge=1, le=20)  # SQS long polling (20 s is SQS's maximum)
    visibility_seconds: int = Field(120, ge=10, le=43200)  # renewed while a message is held
    # a message whose files are still not in the ledger after this long goes back to the
    # queue (its receive count grows, so a redrive policy can move it to a dead-letter queue)
    hold_seconds: float = Field(900.0, gt=0.0)

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if value.startswith("sqs://") and value[6:].strip("/"):
            return value
        if value.startswith(("https://", "http://")) and value.rstrip("/").count("/") >= 4:
            return value
        raise ValueError(
            f"queue {value!r} is not an SQS queue: write sqs://<queue name> (looked up in "
            "the region of AWS_DEFAULT_REGION) or the queue's URL "
            "(https://sqs.<region>.amazonaws.com/<account>/<name>)"
        )


class IngestSpec(_Frozen):
    settle_seconds: float = Field(1.0, ge=0.0)  # a file written in place must be this quiet
    # Files that land together form one batch (orders with the customers they name): new
    # files are taken once none has been completed for this long.
    batch_window_seconds: float = Field(0.5, ge=0.0)
    # A symbolic link in a raw folder whose target is outside the project folder and outside
    # its source's folder is refused unless this is true (see core.storage.link_refusal).
    follow_links_outside: bool = False
    # How often a pass checks every raw file the ledger took (a stat each) and every output
    # it trusts (a ``_SUCCESS`` each) for a change made behind driftloop's back; between
    # checks a pass looks only at names, new files and changed folders, so its cost follows
    # new work (see orchestration/settled.py). 0: on every pass.
    recheck_seconds: float = Field(300.0, ge=0.0)
    # S3 event notifications through an SQS queue (core.sqs); a string is the queue alone
    events: EventsSpec | None = None

    @field_validator("events", mode="before")
    @classmethod
    def _queue_alone(cls, value: Any) -> Any:
        return {"queue": value} if isinstance(value, str) else value


Estimator = Literal[
    "hist_gradient_boosting", "logistic_regression", "linear_regression", "random_forest"
]
CLASSIFICATION_METRICS = ("roc_auc", "log_loss", "f1", "accuracy", "average_precision")
REGRESSION_METRICS = ("rmse", "mae", "r2")
Metric = Literal["roc_auc", "log_loss", "f1", "accuracy", "average_precision", "rmse", "mae", "r2"]


class WindowSpec(_Frozen):
    """Which rows a model trains on: all of them, or the newest N rows or N days."""

    kind: Literal["all", "last_rows", "last_days"] = "all"
    size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _size_when_needed(self) -> WindowSpec:
        if self.kind != "all" and self.size is None:
            raise ValueError(f"window kind {self.kind!r} needs a 'size'")
        return self


class HoldoutSpec(_Frozen):
    """The newest slice that evaluates a model: a fraction of rows, or the last N days."""

    fraction: float = Field(0.2, gt=0.0, lt=1.0)
    days: float | None = Field(None, gt=0.0)


class ModelSpec(_Frozen):
    enabled: bool = True  # false: prep and features only
    estimator: Estimator = "hist_gradient_boosting"
    params: dict[str, Any] = {}
    seed: int = 0
    metric: Metric | None = None  # default: roc_auc (classification), rmse (regression)
    window: WindowSpec = WindowSpec()
    holdout: HoldoutSpec = HoldoutSpec()
    split: Literal["auto", "time", "arrival", "random"] = "auto"
    min_rows: int = Field(50, ge=2)
    # After the gate's comparison (on a model fitted without the holdout), the version that
    # is served is fitted again on every row of the window, the holdout included.
    refit_on_all: bool = True
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in the project


class PromotionSpec(_Frozen):
    """When a challenger becomes champion: scored on the same newest holdout as the champion."""

    metric: Metric | None = None  # default: the model's metric
    min_improvement: float = Field(0.0, ge=0.0)  # absolute, in the metric's better direction
    min_relative_improvement: float = Field(0.0, ge=0.0)  # e.g. 0.01 = 1% better
    must_beat_baseline: bool = True


class RetrainSpec(_Frozen):
    """When the loop trains a challenger (the promotion gate then decides whether it serves).

    New data alone trains every ``every_batches`` batches (0: never; the first model is
    always trained). Drift or decay found on data that arrived since the last training
    trains at once (``on_drift``, ``on_decay``), and ``every_hours`` trains when new data has
    waited that long. ``cooldown_minutes`` spaces trainings out whatever triggers them. The
    rows a model learns from are ``model.window``.
    """

    every_batches: int = Field(1, ge=0)
    on_drift: bool = True
    on_decay: bool = True
    every_hours: float | None = Field(None, gt=0.0)
    cooldown_minutes: float = Field(0.0, ge=0.0)


DriftTestName = Literal["ks", "wasserstein", "psi", "jensenshannon", "chisquare", "z"]
NUMERIC_TESTS = ("ks", "wasserstein", "psi", "jensenshannon")
CATEGORICAL_TESTS = ("psi", "jensenshannon", "chisquare", "z")


class ColumnMonitoring(_Frozen):
    """One column's drift test and thresholds, instead of the automatic choice."""

    test: DriftTestName | None = None  # None: chosen by type and sample size
    threshold: float | None = Field(None, gt=0.0)  # the test's own (p-value or distance)
    effect_threshold: float | None = Field(None, ge=0.0)  # smallest effect that is drift
    enabled: bool = True  # false: the column is not tested


class PerformanceMonitoring(_Frozen):
    """Realized performance when labels arrive: windows, confidence, tolerated decay."""

    # How much worse than the holdout before a window decayed: a share of the holdout's value
    # for error metrics (rmse, mae, log_loss: 0.05 = 5% higher), metric units for bounded
    # ones (roc_auc, accuracy, f1, average_precision, r2: 0.05 = 0.05 lower).
    tolerance: float = Field(0.05, ge=0.0)
    window_rows: int = Field(1_000, ge=10)  # rows per window (without window_days)
    window_days: float | None = Field(None, gt=0.0)  # by time when the data has a time
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap: int = Field(200, ge=50, le=10_000)  # resamples for the confidence interval


class MonitoringSpec(_Frozen):
    """Drift and performance monitoring (``driftloop monitor``)."""

    method: Literal["sample_size_aware", "fixed_threshold"] = "sample_size_aware"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # permutation test level, per column
    permutations: int = Field(500, ge=99, le=100_000)
    drift_share: float = Field(0.5, gt=0.0, le=1.0)  # dataset drift at this weighted share
    weight_by_importance: bool = True  # when the model exposes feature importances
    numeric_test: DriftTestName | None = None  # for every numeric column; None: automatic
    categorical_test: DriftTestName | None = None
    columns: dict[str, ColumnMonitoring] = {}
    window_days: float = Field(7.0, gt=0.0)  # of the prediction log, ending now
    seed: int = 0
    performance: PerformanceMonitoring = PerformanceMonitoring()
    # The event loop (driftloop watch): each new batch is checked against the champion as
    # it arrives (its labels give realized performance), and the prediction log on a schedule.
    on_new_data: bool = True
    schedule_minutes: float | None = Field(60.0, gt=0.0)  # None: no scheduled monitoring

    @model_validator(mode="after")
    def _tests_fit_kinds(self) -> MonitoringSpec:
        if self.numeric_test is not None and self.numeric_test not in NUMERIC_TESTS:
            raise ValueError(
                f"numeric_test {self.numeric_test!r} is for categorical columns; "
                f"use one of {list(NUMERIC_TESTS)}"
            )
        if self.categorical_test is not None and self.categorical_test not in CATEGORICAL_TESTS:
            raise ValueError(
                f"categorical_test {self.categorical_test!r} is for numeric columns; "
                f"use one of {list(CATEGORICAL_TESTS)}"
            )
        return self


class PredictionLogSpec(_Frozen):
    """How /predict's log is buffered: in memory, flushed in the background."""

    buffer_rows: int = Field(200_000, ge=1)  # beyond this, records are dropped and counted
    flush_rows: int = Field(20_000, ge=1)
    flush_seconds: float = Field(5.0, gt=0.0)


class FeedbackLimitSpec(_Frozen):
    """How many /feedback labels one caller (API token, or address when the API is open)
    may send: a token bucket of ``burst`` labels refilled at ``labels_per_second``, per
    worker; beyond it, 429 with Retry-After."""

    labels_per_second: float = Field(100.0, gt=0.0)
    burst: int = Field(10_000, ge=1)


class HttpLimitsSpec(_Frozen):
    """What one connection may cost a worker: header size and count, the time to send the
    headers and the body, idle keep-alive, and connections per worker. Beyond them a client
    gets 431 (headers too large), 408 (too slow) or 503 (too many connections), and the
    connection is closed."""

    max_header_bytes: int = Field(16_384, ge=1024)  # request line + header names and values
    max_headers: int = Field(100, ge=8)
    header_timeout_seconds: float = Field(10.0, gt=0.0)  # from connect / first byte to the end
    body_timeout_seconds: float = Field(30.0, gt=0.0)  # from the headers to the body's end
    keep_alive_seconds: int = Field(5, ge=1)  # an idle connection between requests
    max_connections: int = Field(512, ge=1)  # per worker; beyond, requests get 503


class ServingSpec(_Frozen):
    """``driftloop serve``: where it listens, how it follows the champion, what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(2, ge=1, le=64)  # processes; each holds the model
    threads_per_worker: int = Field(1, ge=1)  # OpenMP/Polars threads inside each worker
    poll_seconds: float = Field(10.0, gt=0.0)  # how often the registry's alias is read
    events_poll_seconds: float = Field(0.5, gt=0.0)  # promotion events in the state database
    unknown_category: Literal["reject", "flag"] = "reject"
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_records: int = Field(1_000, ge=1)  # records in one request
    batch_max_records: int = Field(256, ge=1)  # records scored together (micro-batching)
    queue_max_records: int = Field(20_000, ge=1)  # waiting to be scored; beyond: 503, retry
    # A request that reaches a worker with no model yet waits this long for one (the first
    # model is being trained, or another worker already serves it) before a 503.
    first_model_wait_seconds: float = Field(10.0, ge=0.0)
    log: PredictionLogSpec = PredictionLogSpec()
    feedback_limit: FeedbackLimitSpec = FeedbackLimitSpec()
    limits: HttpLimitsSpec = HttpLimitsSpec()


STATE_URL_ENV = "DRIFTLOOP_STATE_URL"
STATE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "postgres")


class StateSpec(_Frozen):
    """Where the state database lives (ledger, stage runs, claims, events).

    Default: ``.driftloop/state.db`` (SQLite), unless ``DRIFTLOOP_STATE_URL`` names a
    server. ``url`` here wins over that variable: every worker of a project must share one
    state database, and the spec is what they all read (the same rule as ``model.tracking_uri``
    over ``MLFLOW_TRACKING_URI``). A password has no place in this file: libpq reads it from
    ``PGPASSWORD`` or ``~/.pgpass``, or leave ``url`` out and set the whole URL in the variable.
    """

    url: str | None = None  # postgresql://user@host:5432/db (psycopg 3) or sqlite:///path

    @field_validator("url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in STATE_SCHEMES:
            raise ValueError(
                f"url must start with postgresql:// (or postgresql+psycopg2://) or sqlite:///, "
                f"got {scheme + '://' if scheme else 'no scheme'}"
            )
        if has_password(value):
            raise ValueError(
                "url holds a password, which does not belong in driftloop.yaml; put it in "
                f"PGPASSWORD or ~/.pgpass, or drop state.url and set {STATE_URL_ENV}"
            )
        return value


class EngineSpec(_Frozen):
    """Where the stage calls run when an orchestrator runs the flow (``driftloop prefect``).

    ``name: local`` (the default) runs them in the flow's own process; ``name: dask`` runs
    the calls that fan out (prep, features and the checks, one per batch) on a Dask cluster:
    the scheduler at ``address``, or without one a ``LocalCluster`` of ``workers`` processes
    on this machine. Each worker is held to ``threads_per_worker`` threads and Polars and
    OpenMP inside it to as many (``POLARS_MAX_THREADS``, ``OMP_NUM_THREADS``), so workers do
    not each take every core. ``engine: dask`` alone is short for ``{name: dask}``. The
    built-in loop (``run``, ``watch``, ``up``) ignores this section.
    """

    name: Literal["local", "dask"] = "local"
    address: str | None = None  # tcp://host:8786; None: a LocalCluster on this machine
    workers: int = Field(2, ge=1, le=256)  # the LocalCluster's worker processes
    threads_per_worker: int = Field(1, ge=1, le=256)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _address_for_dask(self) -> EngineSpec:
        if self.address is not None:
            if self.name != "dask":
                raise ValueError(f"address is for engine name 'dask', not {self.name!r}")
            if "://" not in self.address:
                raise ValueError(
                    f"address {self.address!r} must be a scheduler URL such as tcp://scheduler:8786"
                )
        return self


class StorageSpec(_Frozen):
    """How object stores (``s3://`` sources) are reached; every field optional.

    Unset, boto3's own configuration applies: ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``,
    ``AWS_PROFILE``, the AWS config and credentials files. Credentials never go here: they
    come from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), a profile
    or the machine's role, and are never written into manifests, logs or errors.
    """

    endpoint_url: str | None = None  # an S3-compatible endpoint (MinIO, moto, ...)
    region: str | None = None
    profile: str | None = None  # a profile of the AWS config file

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"endpoint_url must be an http:// or https:// URL, got {value!r}")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "endpoint_url holds credentials, which do not belong in driftloop.yaml; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        return value

    def settings(self) -> dict[str, str | None]:
        """The keywords an object store is built with (``rawstore.raw_store``)."""
        return {"endpoint_url": self.endpoint_url, "region": self.region, "profile": self.profile}


class Spec(_Frozen):
    """A whole ``driftloop.yaml``."""

    name: str
    task: Literal["classification", "regression"]
    target: str
    time_column: str | None = None
    id_column: str | None = None
    sources: tuple[SourceSpec, ...] = Field(min_length=1)
    contract: ContractSpec
    cleaning: CleaningSpec = CleaningSpec()
    features: FeaturesSpec = FeaturesSpec()
    quarantine: QuarantineSpec = QuarantineSpec()
    ingest: IngestSpec = IngestSpec()
    model: ModelSpec = ModelSpec()
    promotion: PromotionSpec = PromotionSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    serving: ServingSpec = ServingSpec()
    retrain: RetrainSpec = RetrainSpec()
    state: StateSpec = StateSpec()
    storage: StorageSpec = StorageSpec()
    engine: EngineSpec = EngineSpec()
    # Where processed, features and quarantine are written: an s3://bucket/prefix URL;
    # without it, data/ in the project folder (core/layout.Layout.output_root).
    outputs: str | None = None

    @field_validator("outputs")
    @classmethod
    def _outputs_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        bucket = value[5:].split("/", 1)[0] if value.lower().startswith("s3://") else ""
        if not bucket:
            raise ValueError(
                f"outputs must be an s3://bucket/prefix URL, got {value!r}; leave it out to "
                "keep the outputs under data/ in the project folder"
            )
        if has_password(value) or "@" in bucket:
            raise ValueError(
                "outputs holds credentials, which do not belong in driftloop.yaml; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        return value.rstrip("/")

    @field_validator(
        "serving", "monitoring", "retrain", "state", "storage", "engine", mode="before"
    )
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        """An empty section (``serving:`` with nothing under it) means the defaults."""
        return {} if value is None else value

    @field_validator("name")
    @classmethod
    def _project_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", value):
            raise ValueError(f"name {value!r} must be letters, digits, '_', '-' or '.'")
        return value

    @model_validator(mode="after")
    def _references(self) -> Spec:
        problems = list(_reference_problems(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def primary(self) -> SourceSpec:
        return self.sources[0]

    @property
    def metric(self) -> str:
        """The model's metric: as the spec says, or the task's default."""
        if self.model.metric is not None:
            return self.model.metric
        return "roc_auc" if self.task == "classification" else "rmse"

    @property
    def promotion_metric(self) -> str:
        return self.promotion.metric or self.metric

    @cached_property
    def json_sections(self) -> dict[str, Any]:
        """The spec as JSON data without the values left at their defaults, computed once
        (the spec is frozen): a pass hashes sections for every batch's keys. Without the
        defaults, a release that adds an option does not change every key and redo every
        project's history; a change of what a default does is a stage's ``*_VERSION``."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named top-level sections, for stage-run keys."""
        payload = {s: self.json_sections.get(s) for s in sorted(sections)}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _reference_problems(spec: Spec) -> list[str]:
    cols = spec.contract.columns
    known = list(cols)

    def missing(where: str, name: str) -> str | None:
        if name in cols:
            return None
        hint = did_you_mean(name, known)
        return f"{where} names column {name!r}, which is not in contract.columns{hint}"

    found: list[str | None] = [missing("target", spec.target)]
    if spec.time_column is not None:
        found.append(missing("time_column", spec.time_column))
        tc = cols.get(spec.time_column)
        if tc is not None and tc.dtype not in ("date", "datetime", "int", "float"):
            found.append(
                f"time_column {spec.time_column!r} has dtype {tc.dtype}; "
                "expected date, datetime, int or float"
            )
    if spec.id_column is not None:
        found.append(missing("id_column", spec.id_column))
    target = cols.get(spec.target)
    if target is not None and target.new_values == "report":
        found.append(
            f"contract.columns.{spec.target}: new_values 'report' does not apply to the target; "
            "a new class must be a decision: add the label to 'allowed' (or remove "
            "new_values there)"
        )
    names = [s.name for s in spec.sources]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        found.append(f"sources: name {dup!r} is used twice; give each source its own name")
    if spec.sources[0].join is not None:
        found.append("sources[0] is the primary source and must not have 'join'")
    for i, source in enumerate(spec.sources[1:], start=1):
        if source.join is None:
            found.append(
                f"sources[{i}] ({source.name}) needs 'join: {{on: [key], how: left}}' "
                "to say how it joins sources[0]"
            )
        else:
            found += [missing(f"sources[{i}].join.on", k) for k in source.join.on]
    for column in spec.cleaning.impute:
        found.append(missing("cleaning.impute", column))
    for column in spec.cleaning.deduplicate.subset or ():
        found.append(missing("cleaning.deduplicate.subset", column))
    feats = spec.features
    for column, parts in feats.datetime_parts.items():
        found.append(missing("features.datetime_parts", column))
        c = cols.get(column)
        if c is not None and c.dtype not in ("date", "datetime"):
            found.append(f"features.datetime_parts: column {column!r} is {c.dtype}, not a date")
        if any(p in ("hour", "minute") for p in parts) and c is not None and c.dtype == "date":
            found.append(f"features.datetime_parts: {column!r} is a date; it has no hour/minute")
    for ratio in feats.ratios:
        found += [missing("features.ratios", ratio.numerator)]
        found += [missing("features.ratios", ratio.denominator)]
    found += [missing("features.logs", c) for c in feats.logs]
    found += [missing("features.buckets", b.column) for b in feats.buckets]
    found += [missing("features.exclude", c) for c in feats.exclude]
    if spec.target in feats.exclude:
        found.append("features.exclude must not name the target")
    if spec.time_column is None:
        model = spec.model
        if model.split == "time":
            found.append("model.split 'time' needs a time_column; set one or use 'arrival'")
        if model.window.kind == "last_days":
            found.append("model.window kind 'last_days' needs a time_column; use 'last_rows'")
        if model.holdout.days is not None:
            found.append("model.holdout.days needs a time_column; use holdout.fraction")
    elif spec.model.holdout.days is not None and spec.model.split in ("arrival", "random"):
        found.append(f"model.holdout.days applies to a time split, not split {spec.model.split!r}")
    wrong_kind = {"classification": "linear_regression", "regression": "logistic_regression"}
    if spec.model.estimator == wrong_kind[spec.task]:
        found.append(
            f"model.estimator {spec.model.estimator!r} does not fit task {spec.task!r}; use "
            f"{'logistic_regression' if spec.task == 'classification' else 'linear_regression'}, "
            "hist_gradient_boosting or random_forest"
        )
    allowed = CLASSIFICATION_METRICS if spec.task == "classification" else REGRESSION_METRICS
    for where, metric in (
        ("model.metric", spec.model.metric),
        ("promotion.metric", spec.promotion.metric),
    ):
        if metric is not None and metric not in allowed:
            found.append(
                f"{where} {metric!r} does not fit task {spec.task!r}; use one of {list(allowed)}"
            )
    return [p for p in found if p]


def did_you_mean(name: str, choices: list[str]) -> str:
    """'; did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _loc_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The valid key names of the model that sits at ``loc`` (for did-you-mean hints)."""
    model: Any = Spec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``tuple[X, ...]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem: ``file: key.path: what; fix``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, _fields_at(loc[:-1]))
            parent = _loc_text(loc[:-1]) or "top level"
            lines.append(f"{where}: unknown key {key!r} in {parent}{hint or '; remove it'}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        path = _loc_text(tuple(p for p in loc if not str(p).startswith(("function-", "tagged-"))))
        if err["type"] == "missing":
            lines.append(f"{where}: {path}: required key is missing; add it")
        elif path:
            got = err.get("input")
            if isinstance(got, str) and "://" in got:  # a URL: never show its password
                got = redact(got)
            lines.append(f"{where}: {path}: {msg} (got {got!r})")
        else:
            lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Any, where: str = SPEC_FILENAME) -> Spec:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of sections (name, task, target, ...)")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, where)) from None


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so ``on:``, ``yes`` and ``No``
    stay strings (YAML 1.1 would turn ``join: {on: [id]}`` into ``{True: [id]}``)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# A spec is a few thousand values at most; aliases (``*name``) may not make it more than
# this once expanded. PyYAML shares an aliased value instead of copying it, but everything
# after (validation, hashing, JSON) walks it whole: ten nested levels of ten aliases each (a
# "billion laughs") is a 1 KB file that exhausted memory.
MAX_YAML_VALUES = 100_000


def read_yaml(text: str, where: str = SPEC_FILENAME) -> Any:
    """Parse YAML text with 1.2 booleans (see :class:`_Yaml12Loader`).

    A document whose aliases expand to more than :data:`MAX_YAML_VALUES` values, or refer to
    the node that holds them, is a :class:`SpecError` naming ``where``, found before anything
    is built from it."""
    loader = _Yaml12Loader(text)  # a SafeLoader subclass: no arbitrary objects
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _bound_aliases(node, where)
        except RecursionError:
            raise SpecError(
                f"{where}: the YAML is nested too deeply to read; flatten its structure"
            ) from None
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _bound_aliases(root: yaml.Node, where: str) -> None:
    """Count the values of ``root`` as if every alias were written out (each distinct node
    is visited once), and refuse a document that would exceed :data:`MAX_YAML_VALUES`."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise SpecError(
                f"{where}: line {node.start_mark.line + 1}: an alias refers to the value that "
                "holds it (a recursive structure); write the value out instead"
            )
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        open_nodes.add(key)
        total = 1 + sum(expanded(child) for child in children)
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_YAML_VALUES:
            raise SpecError(
                f"{where}: line {node.start_mark.line + 1}: YAML aliases (*name) expand this "
                f"value to {total:,} values, more than the {MAX_YAML_VALUES:,} allowed; "
                "aliases are limited so that a small file cannot exhaust memory (an alias "
                "bomb); write the values out, or alias fewer nested values"
            )
        return total

    expanded(root)


def load_spec(project: Path) -> Spec:
    """Read ``driftloop.yaml`` from a project folder (or a path to the file itself)."""
    path = project if project.suffix in (".yaml", ".yml") else project / SPEC_FILENAME
    if not path.is_file():
        raise SpecNotFoundError(
            f"{path}: no spec file here; run 'driftloop init --from FILE --target COLUMN' "
            "in this folder, or pass --project to a folder that has one"
        )
    try:
        data = read_yaml(path.read_text(encoding="utf-8"), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}:{at}: not valid YAML: {problem}; fix the syntax there") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    return parse_spec(data, str(path))
