"""A token bucket per caller: how many /feedback labels one API token may send.

Each caller (an API token, or the client's address when the API is open) has a bucket of
``burst`` labels that refills at ``labels_per_second``; a request takes one unit per label.
A request that finds too few gets 429 with the seconds to wait (``Retry-After``). Buckets are
per worker process: with N workers a caller may reach up to N times the rate. Callers idle
long enough to have a full bucket are forgotten, so the table stays small.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (units, at)
        self._lock = threading.Lock()

    def take(self, caller: str, units: int) -> float:
        """Take ``units`` from the caller's bucket: 0.0 when done, else the seconds until
        they would be there (nothing is taken then)."""
        now = self._clock()
        with self._lock:
            held, at = self._buckets.get(caller, (float(self.burst), now))
            held = min(float(self.burst), held + (now - at) * self.rate)
            if units <= held:
                self._buckets[caller] = (held - units, now)
                wait = 0.0
            else:
                self._buckets[caller] = (held, now)
                wait = (units - held) / self.rate
            if len(self._buckets) > 10_000:
                self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        full = [
            c for c, (u, at) in self._buckets.items() if u + (now - at) * self.rate >= self.burst
        ]
        for caller in full:
            del self._buckets[caller]


def retry_after(wait: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
