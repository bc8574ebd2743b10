"""driftloop: a self-updating machine-learning lifecycle for tabular data.

The public API mirrors the CLI verbs. Heavy libraries (Polars, pandera, pyarrow) are imported
only when a function that needs them runs, so ``import driftloop`` and ``driftloop --help``
stay fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# OpenMP threads (scikit-learn's gradient boosting, Treelite) that wait at a barrier spin
# first: GNU OpenMP's default is 300,000 turns. When another process holds a core, the
# thread they wait for is not running and every barrier costs a scheduler slice: a fit that
# takes 0.4 s took 36-103 s beside one busy loop on two cores. 1,000 turns costs nothing
# measurable on a quiet machine (0.37 s) and kept that fit at 1.5 s. Set here, before
# anything loads the OpenMP runtime (it reads the variable once); a value already set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

if TYPE_CHECKING:
    from driftloop.core.errors import DriftloopError
    from driftloop.core.spec import Spec, load_spec
    from driftloop.init import init_example, init_from_file
    from driftloop.monitoring.run import MonitorResult, monitor
    from driftloop.pipeline import RunResult, plan, read_features, run, run_stage

__all__ = [
    "DriftloopError",
    "MonitorResult",
    "RunResult",
    "Spec",
    "__version__",
    "init_example",
    "init_from_file",
    "load_spec",
    "monitor",
    "plan",
    "read_features",
    "run",
    "run_stage",
]

_LAZY = {
    "DriftloopError": "driftloop.core.errors",
    "RunResult": "driftloop.pipeline",
    "run": "driftloop.pipeline",
    "read_features": "driftloop.pipeline",
    "plan": "driftloop.pipeline",
    "run_stage": "driftloop.pipeline",
    "Spec": "driftloop.core.spec",
    "load_spec": "driftloop.core.spec",
    "init_from_file": "driftloop.init",
    "init_example": "driftloop.init",
    "monitor": "driftloop.monitoring.run",
    "MonitorResult": "driftloop.monitoring.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'driftloop' has no attribute {name!r}")
