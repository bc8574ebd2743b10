"""The user's feature module must live in the project folder, the code a model carries.

``features.function: .tmp.x:build`` used to name ``/tmp/x.py`` (the project folder joined
with an absolute path): it ran in ``run`` and ``serve`` and was never packaged with the
model. A module name with a leading dot is refused with the spec, and a module file that a
symbolic link leads outside the project is refused before it runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftloop.cli import EXIT_BAD_INPUT, app
from driftloop.core.errors import FeatureError, SpecError
from driftloop.core.spec import parse_spec, read_yaml
from driftloop.features.compute import load_user_function, user_module_path

from .helpers import write_spec
from .test_features import DELTA_SPEC

# Executing this module leaves a file beside it: the tests check it never ran.
TELLTALE = (
    "import pathlib, polars as pl\n"
    "pathlib.Path(__file__).with_name('it-ran').write_text('yes')\n"
    "def f(frame):\n"
    "    return [(pl.col('x') * 2).alias('x2')]\n"
)


def project(root: Path, function: str) -> Path:
    write_spec(root, DELTA_SPEC.replace("function: feats:f", f"function: {function}"))
    (root / "data/raw/s").mkdir(parents=True)
    (root / "data/raw/s/a.csv").write_text("x,y,k\n1,10,a\n3,30,b\n")
    return root


@pytest.mark.parametrize("function", [".tmp.x:build", "..feats:f", "pkg..feats:f"])
def test_a_module_name_that_leaves_the_project_is_refused_with_the_spec(function: str) -> None:
    text = DELTA_SPEC.replace("function: feats:f", f"function: {function}")
    with pytest.raises(SpecError) as caught:
        parse_spec(read_yaml(text))
    message = str(caught.value)
    assert "features.function" in message and repr(function) in message
    assert "inside the project folder" in message and "'features:build'" in message


def test_a_module_linked_from_outside_the_project_never_runs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "feats.py").write_text(TELLTALE)
    root = project(tmp_path / "p", "feats:f")
    (root / "feats.py").symlink_to(outside / "feats.py")

    out = CliRunner().invoke(app, ["run", "-p", str(root)])
    assert out.exit_code == EXIT_BAD_INPUT, out.output
    assert "features.function 'feats:f': the module file" in out.output
    assert "leads outside the project folder" in out.output and "pkg.feats:build" in out.output
    assert not (outside / "it-ran").exists(), "the module outside the project was executed"
    with pytest.raises(FeatureError, match="leads outside the project folder"):
        load_user_function("feats:f", root)


def test_a_module_in_a_project_subfolder_is_found_and_run(tmp_path: Path) -> None:
    from driftloop.pipeline import run

    root = project(tmp_path / "p", "pkg.feats:f")
    (root / "pkg").mkdir()
    (root / "pkg" / "feats.py").write_text(TELLTALE)
    assert user_module_path("pkg.feats:f", root) == root / "pkg" / "feats.py"
    assert not run(root).failed
    assert (root / "pkg" / "it-ran").exists()
