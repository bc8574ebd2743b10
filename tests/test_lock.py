"""The locks (requirements/*.lock, written by ``make lock``) cover pyproject.toml: every
requirement of the extras a lock is for has a pin there that satisfies it. A
pyproject.toml edited without ``make lock`` fails here, naming the requirement and the lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# lock -> the extras it resolves (besides the base dependencies); the Makefile's `lock` target
LOCKS = {
    "dev.lock": ("dev",),
    "prefect.lock": ("dev", "prefect"),
    "image.lock": ("s3", "postgres", "prefect"),
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def pins(lock: Path) -> dict[str, set[str]]:
    """Package -> its pinned versions (a universal lock may pin two, under markers)."""
    found: dict[str, set[str]] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            found.setdefault(canonicalize_name(match[1]), set()).add(match[2])
    return found


def _wanted(lock_name: str) -> tuple[list[str], str]:
    """The requirements a lock must pin, and where they are written."""
    if lock_name == "airflow.lock":  # .venv-airflow's: not driftloop's extras, its own list
        text = (REPO / "requirements" / "airflow.in").read_text(encoding="utf-8")
        lines = [line.split("#")[0].strip() for line in text.splitlines()]
        return [line for line in lines if line], "requirements/airflow.in"
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in LOCKS[lock_name]:
        wanted += project["optional-dependencies"][extra]
    return wanted, "pyproject.toml"


@pytest.mark.parametrize("lock_name", [*sorted(LOCKS), "airflow.lock"])
def test_every_requirement_has_a_matching_pin(lock_name: str) -> None:
    wanted, source = _wanted(lock_name)
    lock = REPO / "requirements" / lock_name
    pinned = pins(lock)
    assert len(pinned) > 50, f"{lock}: too few pins ({len(pinned)}); run make lock"
    problems = []
    for text in wanted:
        req = Requirement(text)
        versions = pinned.get(canonicalize_name(req.name))
        if not versions:
            problems.append(f"{text!r} has no pin")
        elif not all(req.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{text!r} does not allow the pinned {sorted(versions)}")
    assert not problems, (
        f"requirements/{lock_name} does not match {source}: {'; '.join(problems)}; "
        "run make lock, then make test, and commit both"
    )


def _uv_env(**env: str) -> str:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    return subprocess.run(
        [sys.executable, str(REPO / ".ci" / "uv-env.py")],
        env={**clean, "PIP_CONFIG_FILE": os.devnull, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()


def test_uv_gets_the_indexes_pip_is_configured_with() -> None:
    """make runs uv with pip's indexes (pip.conf, PIP_* variables) as UV_* variables; a
    UV_* variable already set wins; pip's defaults give nothing."""
    assert _uv_env() == ""
    out = _uv_env(
        PIP_INDEX_URL="https://mirror.example.invalid/simple",
        PIP_EXTRA_INDEX_URL="file:///srv/a/simple file:///srv/b/simple",
        PIP_FIND_LINKS="/srv/wheels",
    )
    assert set(f" {out}".split(" UV_")) == {
        "",
        "DEFAULT_INDEX=https://mirror.example.invalid/simple",
        "INDEX='file:///srv/a/simple file:///srv/b/simple'",
        "FIND_LINKS=/srv/wheels",
        "INDEX_STRATEGY=unsafe-best-match",
    }
    kept = _uv_env(PIP_FIND_LINKS="/srv/wheels", UV_FIND_LINKS="/mine")
    assert "UV_FIND_LINKS" not in kept
