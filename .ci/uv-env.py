"""Print the package indexes pip is configured with here, as uv's environment variables.

``make`` runs uv with them (``env $(shell python .ci/uv-env.py) uv ...``), so uv resolves and
installs from the same places as pip on this machine: pip.conf files and ``PIP_*`` variables
(``pip config list``). Prints nothing where pip uses its defaults. A ``UV_*`` variable already
set wins. Nothing is written anywhere.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

# pip's key (after the section) -> uv's variable; pip's lists are space-separated
KEYS = {"index-url": "UV_DEFAULT_INDEX", "extra-index-url": "UV_INDEX", "find-links": "UV_FIND_LINKS"}
SEPARATOR = {"UV_DEFAULT_INDEX": " ", "UV_INDEX": " ", "UV_FIND_LINKS": ","}


def pip_settings() -> dict[str, str]:
    """pip's effective value per key: environment first, then install/global sections."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rank = {":env:": 0, "install": 1, "global": 2}
    best: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if key not in KEYS or section not in rank:
            continue
        value = value.strip().strip("'\"")
        if key not in best or rank[section] < best[key][0]:
            best[key] = (rank[section], value)
    return {key: value for key, (_, value) in best.items()}


def main() -> None:
    assignments = []
    for key, value in pip_settings().items():
        var = KEYS[key]
        if var in os.environ or not value.strip():
            continue
        assignments.append(f"{var}={shlex.quote(SEPARATOR[var].join(value.split()))}")
    if assignments and "UV_INDEX_STRATEGY" not in os.environ:
        # pip takes the best version from all its indexes; uv's default takes the first
        # index that has the package
        assignments.append("UV_INDEX_STRATEGY=unsafe-best-match")
    print(" ".join(assignments))


if __name__ == "__main__":
    main()
