"""The public API: everything in __all__ resolves, and nothing heavy loads on import."""

from __future__ import annotations

import subprocess
import sys

import driftloop


def test_all_names_resolve() -> None:
    for name in driftloop.__all__:
        assert getattr(driftloop, name) is not None, name


def test_import_is_light() -> None:
    code = (
        "import sys, driftloop; "
        "print(sorted(m for m in ('polars', 'pandera', 'pyarrow', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
