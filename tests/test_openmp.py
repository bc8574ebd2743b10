"""OpenMP's spin at barriers is kept short in every driftloop process (GOMP_SPINCOUNT)."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import driftloop, os; print(os.environ['GOMP_SPINCOUNT'])"


def _spincount(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_importing_driftloop_sets_a_short_openmp_spin_before_openmp_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert _spincount(env) == "1000"


def test_a_spin_the_user_set_wins() -> None:
    assert _spincount({**os.environ, "GOMP_SPINCOUNT": "25"}) == "25"


def test_the_cli_sets_it_before_scikit_learn_loads_openmp() -> None:
    """The command's entry point imports the package (and so sets the variable) before any
    module that loads OpenMP's runtime, which reads it once."""
    code = (
        "import sys; import driftloop.cli; "
        "assert 'sklearn' not in sys.modules and 'threadpoolctl' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('sklearn', 'threadpoolctl'))); "
        "import os; print(os.environ['GOMP_SPINCOUNT'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "1000"
