"""Serving, as the dashboard shows it: requests per second, p50/p99 latency, errors and the
version each worker serves, read from the server's own Prometheus exposition (``/metrics``;
in the serving process, the same text without a request).

Rates and quantiles are over the interval since the previous reading (the first reading has
only the totals since the server started); quantiles are interpolated inside the latency
histogram's buckets, so they are only as exact as the buckets
(:data:`driftloop.serving.metrics.LATENCY_BUCKETS`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PREDICT = "/predict"


@dataclass(frozen=True)
class Reading:
    """The counters of one exposition."""

    at: float
    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), sorted
    versions: dict[str, str]  # 'pid N' (or 'this worker') -> the version it serves
    errors_by_kind: dict[str, float] = field(default_factory=dict)


def parse(text: str, at: float) -> Reading:
    """One exposition's /predict counters (pure)."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    buckets: dict[float, float] = {}
    versions: dict[str, str] = {}
    kinds: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "driftloop_requests_total" and labels.get("endpoint") == PREDICT:
                requests += s.value
            elif s.name == "driftloop_request_errors_total" and labels.get("endpoint") == PREDICT:
                errors += s.value
                kinds[labels.get("kind", "?")] = kinds.get(labels.get("kind", "?"), 0) + s.value
            elif s.name == "driftloop_request_seconds_bucket" and labels.get("endpoint") == PREDICT:
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
            elif s.name == "driftloop_model_version":
                who = f"pid {labels['pid']}" if "pid" in labels else "this worker"
                versions[who] = f"{s.value:g}"
    return Reading(at, requests, errors, tuple(sorted(buckets.items())), versions, kinds)


def quantile(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    """The q-quantile, interpolated linearly inside the bucket it falls in, as Prometheus's
    ``histogram_quantile`` does (None without observations; inf when it is above the last
    finite bucket). Exact only to the bucket: the buckets' bounds are what was measured."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    want = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= want:
            if math.isinf(bound):
                return math.inf
            inside = count - below
            return lower + (bound - lower) * ((want - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return math.inf


def summary(now: Reading, before: Reading | None) -> dict[str, Any]:
    """What the Now view shows: over the interval since ``before`` when there is one."""
    if before is not None and now.at > before.at and now.requests >= before.requests:
        seconds = now.at - before.at
        done = now.requests - before.requests
        old = dict(before.buckets)
        buckets = tuple((b, c - old.get(b, 0.0)) for b, c in now.buckets)
        window = f"last {seconds:.0f} s"
        rps: float | None = done / seconds
        errors = now.errors - before.errors
    else:
        buckets, window, rps, errors = now.buckets, "since the server started", None, now.errors
        done = now.requests
    return {
        "window": window,
        "rps": rps,
        "requests": done,
        "total_requests": now.requests,
        "errors": errors,
        "errors_by_kind": now.errors_by_kind,
        "p50_ms": _ms(quantile(buckets, 0.5)),
        "p99_ms": _ms(quantile(buckets, 0.99)),
        "versions": now.versions,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class Sampler:
    """Keeps the previous reading so that each look shows the rate since the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Reading | None = None

    def look(self, text: str) -> dict[str, Any]:
        reading = parse(text, time.monotonic())
        with self._lock:
            before, self._last = self._last, reading
        # a window too short says nothing: keep comparing with the older reading
        if before is not None and reading.at - before.at < 1.0:
            with self._lock:
                self._last = before
        return summary(reading, before)
