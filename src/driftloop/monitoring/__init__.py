"""Drift and performance monitoring: is current data still like the champion's training
data, and is the champion still as good as it was on its holdout?

Modules: ``stattests`` (one test per module, a registry, Evidently's automatic choice),
``decision`` (the sample-size-aware decision), ``reference`` / ``current`` (column data),
``drift`` (per column and dataset drift), ``performance`` (realized and estimated
performance, streaming detectors), ``predlog`` (the prediction log and feedback),
``report`` and ``html`` (the JSON and HTML reports), ``run`` (the ``driftloop monitor`` edge).
"""

from __future__ import annotations
