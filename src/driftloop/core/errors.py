"""Every error driftloop raises on purpose.

A message says what went wrong, where (file, key path, row, column), what was expected and
how to fix it. The CLI prints the message on one line and exits non-zero; a traceback is
shown only with ``--verbose``.

    DriftloopError
     ├── SpecError                    driftloop.yaml is missing, unreadable or invalid
     │    ├── SpecNotFoundError       no driftloop.yaml in the project folder
     │    └── ExportError             the spec lacks what an export needs (``export aws``:
     │                                sources and outputs on S3, a shared state database)
     ├── ProjectError                 the project folder is not usable
     │    ├── ProjectExistsError      ``init`` would overwrite an existing project
     │    └── ProjectLockedError      another ``driftloop watch`` holds the project
     ├── InitError                    ``init`` could not infer a spec from the sample
     ├── StageError                   a stage failed; names the stage and the batch
     │    ├── QuarantineLimitError    a batch's share of bad rows is above the spec's limit
     │    ├── NewLabelError           a batch holds a target label the contract does not list
     │    ├── JoinError               secondary sources cannot be joined as the spec says
     │    ├── FeatureError            the feature function failed or returned bad output
     │    ├── TrainError              the data cannot train a model (too few rows, constant target)
     │    └── StaleBatchError         a batch cannot be prepared again (a raw file is gone or
     │                                changed); its earlier outputs are kept, marked stale
     ├── RegistryError                the model registry (MLflow) refused or lacks what is asked
     │    └── RegistryUnavailableError  it did not answer (retried: a TransientError too)
     ├── MonitoringError              monitoring lacks what it compares (no champion, no data)
     │    └── NothingToMonitorError  no champion yet, or no prediction in the window: exit 6
     ├── StorageError                 a source or output location cannot be used
     │    ├── StorageSchemeError      its URL names a storage driftloop has no store for (yet)
     │    ├── BucketNotFoundError     an object store's bucket does not exist
     │    ├── StorageAccessError      the store refused the credentials (or found none)
     │    ├── EventQueueError         the SQS queue of ingest.events cannot be used
     │    └── StorageUnavailableError the store did not answer, throttled or failed (5xx);
     │                                retried: a TransientError too
     ├── DiskFullError                no space left writing an output or the state database
     └── StateError                   the state database is unusable
          └── StateLockedError        another process held its write lock past the timeout

A ``TransientError`` says the failure may pass by itself (a registry or an object store
that did not answer, a locked state database, a full disk): the loop retries it with a
backoff, where other errors are failures of the data or spec. The CLI exits 5 for the last
three (nothing was lost; fix the machine's condition and run again).
"""

from __future__ import annotations

import errno


class DriftloopError(Exception):
    """Root of every error driftloop raises on purpose."""


class SpecError(DriftloopError):
    """driftloop.yaml is unreadable or does not describe a valid project."""


class SpecNotFoundError(SpecError):
    """No driftloop.yaml where one was expected."""


class ExportError(SpecError):
    """The spec cannot be exported to the target asked for (what is missing, and how to
    add it, is in the message)."""


class ProjectError(DriftloopError):
    """The project folder cannot be used as asked."""


class ProjectExistsError(ProjectError):
    """``init`` refuses to overwrite an existing project."""


class ProjectLockedError(ProjectError):
    """Another process holds the project's writer lease."""


class InitError(DriftloopError):
    """``init`` could not infer a usable spec from the sample file."""


class StageError(DriftloopError):
    """A stage failed on a batch."""


class QuarantineLimitError(StageError):
    """A batch has more bad rows than the spec's ``quarantine.max_bad_share`` allows."""


class NewLabelError(StageError):
    """A batch holds a target label the contract's ``allowed`` list does not name: a new
    class must be a decision (add it to the list), not an accident."""


class JoinError(StageError):
    """Sources cannot be joined on the keys the spec names."""


class FeatureError(StageError):
    """The feature function failed or returned unusable output."""


class TrainError(StageError):
    """The data cannot train a model as the spec asks."""


class StaleBatchError(StageError):
    """A batch's outputs cannot be rebuilt (a raw file it reads is gone, or changed since it
    was ingested): the outputs an earlier run built are kept, and the batch is stale until
    the file is back or a user accepts it (``driftloop batches dismiss``)."""


class RegistryError(DriftloopError):
    """The model registry does not hold what was asked for, or refused the change."""


class MonitoringError(DriftloopError):
    """Monitoring cannot compare: no champion, no current data, or an unreadable log."""


class NothingToMonitorError(MonitoringError):
    """Nothing to compare yet, and nothing wrong: no champion, or no prediction in the log's
    window (a quiet hour). ``driftloop monitor`` exits 6; a scheduled monitor (Step
    Functions, Airflow, Prefect, ``watch``) says so and succeeds."""


class StorageError(DriftloopError):
    """A source or output location cannot be used."""


class StorageSchemeError(StorageError):
    """A URL names a storage scheme driftloop has no store for (yet)."""


class BucketNotFoundError(StorageError):
    """An object store's bucket does not exist (or this account cannot see it)."""


class StorageAccessError(StorageError):
    """The object store refused the credentials, or none were found."""


class EventQueueError(StorageError):
    """The SQS queue that bucket notifications arrive on is missing or refuses us."""


class TransientError(DriftloopError):
    """A failure that may pass by itself; the loop retries it."""


class RegistryUnavailableError(RegistryError, TransientError):
    """The model registry did not answer."""


class StorageUnavailableError(StorageError, TransientError):
    """The object store did not answer, throttled the request or failed on its side (5xx)."""


class StateError(DriftloopError):
    """The state database is unusable."""


class StateLockedError(StateError, TransientError):
    """Another process held the state database's write lock longer than the wait allows."""


class DiskFullError(TransientError):
    """No space left on the device an output or the state database is written to."""


def is_disk_full(exc: BaseException) -> bool:
    """An OSError saying the device is full (errno ENOSPC or EDQUOT), or SQLite's own
    "database or disk is full" (SQLITE_FULL)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "database or disk is full" in text or "No space left on device" in text


def disk_full(where: str, exc: BaseException) -> DiskFullError:
    """The one message for a full disk: what, where, and advice that loses nothing."""
    return DiskFullError(
        f"{where}: no space left on the device ({first_line(exc)}); free space on that disk "
        "(old reports under data/monitoring, other files), then run again: the pass starts "
        "over from what was committed. Nothing needs moving or deleting in the project: do "
        "not move .driftloop/state.db aside (it records which raw files were taken; without "
        "it every raw file would be ingested again, into a second set of processed outputs)"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (third-party errors often span many lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
