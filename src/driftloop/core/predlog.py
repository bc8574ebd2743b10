"""The prediction and feedback logs' schema, defined once: ``driftloop serve`` writes them
(:mod:`driftloop.serving.logbook`), monitoring reads them (:mod:`driftloop.monitoring.predlog`).

Layout (under :attr:`driftloop.core.layout.Layout.predictions` and ``.feedback``)::

    date=YYYY-MM-DD/part-*.parquet      one part per flush, by the date of each row's __ts

Prediction rows: the contract's input columns as their contract types, then the columns
below (``__ts`` Datetime us UTC, ``__record`` Int32, ``__prediction`` a String label or a
Float64 value, ``__proba_<class>`` Float64 for classifiers, ``__flags`` nullable String).
Feedback rows: ``__ts``, ``__request_id``, ``__record`` and ``__label`` (the true value as
text in the target's contract type), then ``__correction`` (Boolean: sent as a correction
by an ``admin`` token) and ``__by`` (String: the fingerprint of the API token that sent it,
null when the API is open); parts written before those two columns lack them. Monitoring
keeps the first label of each record, unless a correction came (the latest one wins).
The log's own columns start with ``__``, like every
column driftloop adds, so they never collide with a contract column (a model may well have
an input called "ts" or "prediction").
"""

from __future__ import annotations

import datetime as dt

TS = "__ts"  # when the request arrived (UTC); the date partition comes from it
REQUEST_ID = "__request_id"
RECORD = "__record"  # the record's position in its request
MODEL_NAME = "__model_name"
MODEL_VERSION = "__model_version"
PREDICTION = "__prediction"  # class label (text) or value
PROBA = "__proba_"  # + class: probability of each class
FLAGS = "__flags"  # remarks on an accepted record (unknown categories, when flagged)
LABEL = "__label"  # /feedback: the true value, as text in the target's contract type
CORRECTION = "__correction"  # /feedback: an admin's correction of an earlier label
BY = "__by"  # /feedback: which API token sent the label (its fingerprint, not the token)
KEYS = [REQUEST_ID, RECORD]  # a prediction's identity, which feedback names
PREDICTION_COLUMNS = [TS, *KEYS, MODEL_NAME, MODEL_VERSION, PREDICTION]  # every part has them
FEEDBACK_COLUMNS = [TS, *KEYS, LABEL]
PART_GLOB = "part-*.parquet"
PARTITION_PREFIX = "date="


def partition(day: dt.date | str) -> str:
    """The folder name of one day's parts."""
    return f"{PARTITION_PREFIX}{day}"


def partition_day(name: str) -> dt.date | None:
    """The day a partition folder holds, or None for a folder driftloop did not write."""
    if not name.startswith(PARTITION_PREFIX):
        return None
    try:
        return dt.date.fromisoformat(name.removeprefix(PARTITION_PREFIX))
    except ValueError:
        return None
