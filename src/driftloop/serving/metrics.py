"""Prometheus metrics of the server, one registry per app.

With several worker processes, ``driftloop serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
the workers start and ``/metrics`` aggregates every worker's values through
``prometheus_client``'s multiprocess collector (per-worker gauges carry a ``pid`` label).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROBA_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20))


class ServingMetrics:
    """Every metric ``/metrics`` exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "driftloop_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "driftloop_request_seconds",
            "Time from request to response, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "driftloop_request_errors",
            "Refused or failed requests by endpoint and kind "
            "(validation, too_large, not_ready, bad_json, model_error)",
            ["endpoint", "kind"],
            registry=r,
        )
        self.records = Counter(
            "driftloop_records", "Records received by /predict, by outcome", ["outcome"], registry=r
        )
        self.predicted = Counter(
            "driftloop_predictions", "Predicted class of each scored record", ["label"], registry=r
        )
        self.positive = Histogram(
            "driftloop_positive_probability",
            "Probability of the positive (second) class, binary classifiers",
            buckets=PROBA_BUCKETS,
            registry=r,
        )
        self.value = Histogram(
            "driftloop_prediction_value",
            "Predicted value, regressors",
            buckets=(0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6),
            registry=r,
        )
        self.version = Gauge(
            "driftloop_model_version",
            "Registered model version this worker serves",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.swaps = Counter(
            "driftloop_model_swaps", "Model loads by outcome (ok, failed)", ["outcome"], registry=r
        )
        self.batch = Histogram(
            "driftloop_batch_records", "Records scored together", buckets=BATCH_BUCKETS, registry=r
        )
        self.dropped = Counter(
            "driftloop_log_dropped_rows",
            "Log rows dropped because the in-memory buffer was full",
            ["log"],
            registry=r,
        )

    def observe_predictions(self, labels: Any, proba: Any, classes: list[str] | None) -> None:
        if len(labels) == 0:
            return
        if classes is None:
            for value in np.asarray(labels, dtype=float):
                self.value.observe(float(value))
            return
        if len(labels) <= 16:  # a request or two: np.unique's sorting costs more than a loop
            counted: dict[str, int] = {}
            for label in labels:
                counted[str(label)] = counted.get(str(label), 0) + 1
            pairs = list(counted.items())
        else:
            names, counts = np.unique(
                np.asarray(labels, dtype=object).astype(str), return_counts=True
            )
            pairs = [(str(n), int(c)) for n, c in zip(names, counts, strict=True)]
        for name, count in pairs:
            self.predicted.labels(name).inc(count)
        if proba is not None and len(classes) == 2:
            for p in proba[:, 1].tolist():
                self.positive.observe(p)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return generate_latest(combined)
        return generate_latest(self.registry)
