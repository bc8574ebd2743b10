"""The built-in loop without Prefect, and the spec's ``engine`` section (no Prefect needed).

The CLI must answer fast and work where the prefect extra is not installed: nothing of
Prefect or Dask is imported until a ``driftloop prefect`` command runs, and there, a missing
extra is one line that says how to install it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from driftloop.core.errors import SpecError
from driftloop.core.spec import parse_spec
from driftloop.orchestration.engine import worker_env

from .helpers import write_spec
from .test_state_store import TINY

BASE = {
    "name": "p",
    "task": "regression",
    "target": "y",
    "sources": [{"name": "s", "path": "data/raw/s/*.csv"}],
    "contract": {"columns": {"x": {"dtype": "int"}, "y": {"dtype": "int"}}},
}


def test_the_cli_and_a_pass_import_no_prefect_or_dask(tmp_path: Path) -> None:
    write_spec(tmp_path, TINY.replace('state: {url: "URL"}\n', ""))
    folder = tmp_path / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("x,y\n1,2\n3,4\n")
    code = (
        "import sys\n"
        "from driftloop.cli import main\n"
        f"sys.argv = ['driftloop', 'run', '-p', {str(tmp_path)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prefect', 'prefect_dask', 'dask', 'distributed'))\n"
        "print('imported:', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "imported: []" in out.stdout
    assert (tmp_path / "data" / "processed").is_dir()  # the pass did run


@pytest.mark.skipif(
    importlib.util.find_spec("prefect") is not None, reason="the prefect extra is installed here"
)
def test_driftloop_prefect_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    write_spec(tmp_path, TINY.replace('state: {url: "URL"}\n', ""))
    out = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "prefect", "run", "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "driftloop[prefect]" in out.stderr and "no module 'prefect'" in out.stderr
    assert "Traceback" not in out.stderr


def test_engine_dask_is_short_for_its_section_and_local_is_the_default() -> None:
    assert parse_spec(BASE).engine.name == "local"
    engine = parse_spec({**BASE, "engine": "dask"}).engine
    assert (engine.name, engine.address, engine.workers, engine.threads_per_worker) == (
        "dask",
        None,
        2,
        1,
    )
    remote = parse_spec({**BASE, "engine": {"name": "dask", "address": "tcp://sched:8786"}})
    assert remote.engine.address == "tcp://sched:8786"
    # an engine left at its default changes no stage's key: the section is not hashed
    assert parse_spec(BASE).json_sections == parse_spec({**BASE, "engine": "local"}).json_sections


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"name": "spark"}, "engine.name"),
        ({"name": "local", "address": "tcp://s:8786"}, "address is for engine name 'dask'"),
        ({"name": "dask", "address": "sched:8786"}, "must be a scheduler URL"),
        ({"name": "dask", "workers": 0}, "engine.workers"),
        ({"name": "dask", "threds_per_worker": 2}, "threds_per_worker"),
    ],
)
def test_a_bad_engine_section_is_refused_at_load(engine: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("'", ".")):
        parse_spec({**BASE, "engine": engine})


def test_each_dask_worker_holds_polars_and_openmp_to_its_threads() -> None:
    assert worker_env(1) == {
        "POLARS_MAX_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


@pytest.mark.skipif(
    importlib.util.find_spec("prefect") is not None, reason="the prefect extra is installed here"
)
def test_ci_makes_a_missing_prefect_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    from .fixtures.prefect_server import require_prefect

    monkeypatch.delenv("DRIFTLOOP_REQUIRE_PREFECT", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make test-prefect"):
        require_prefect()
    monkeypatch.setenv("DRIFTLOOP_REQUIRE_PREFECT", "1")
    with pytest.raises(pytest.fail.Exception, match="DRIFTLOOP_REQUIRE_PREFECT=1"):
        require_prefect()
