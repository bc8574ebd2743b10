"""``driftloop init --ci github|azure``: a CI workflow for a user's driftloop project.

On a push that touches the spec, the feature module or the CI sample, the workflow

1. validates the spec and builds a *sample project*: a copy of the spec made local (sources
   read from ``data/raw/<source>/``, state, outputs and registry in the copy's own folder,
   never the team's shared ones) beside the committed sample files and the feature module;
2. runs one pass on that sample (``driftloop run``, then ``status`` and ``models``):
   ingest, prep, features and, when the policy says so, a training whose gate runs against
   the copy's own empty registry;
3. on the main branch only, deploys: applies the stack ``driftloop export aws`` writes
   (``--deploy aws``), or runs the team's own command (for example one that restarts the
   service running ``driftloop prefect serve``).

CI never promotes a model: the promotion gate does, where the loop runs, on real data.

:func:`render` is pure (spec in, text out); :func:`sample_project` and :func:`main` are the
edges the workflow calls (``python -m driftloop.export.ci sample-project ...``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from driftloop import __version__
from driftloop.core.errors import DriftloopError, InitError
from driftloop.core.spec import SPEC_FILENAME, Spec, load_spec

CiKind = Literal["github", "azure"]
KINDS: tuple[CiKind, ...] = ("github", "azure")
GITHUB_PATH = ".github/workflows/driftloop-{name}.yml"
AZURE_PATH = "azure-pipelines-driftloop-{name}.yml"
DEFAULT_SAMPLE = "ci/sample"  # relative to the project folder
PYTHON_VERSION = "3.11"
SAMPLE_DIR = "driftloop-sample"  # the sample project, under the runner's temporary folder
DEPLOY_AWS = "aws"
DEPLOY_NONE = "none"


@dataclass(frozen=True)
class CiSettings:
    """What a workflow needs besides the spec. Paths are POSIX, relative to the repository
    root (``project``) or to the project folder (``sample``)."""

    kind: CiKind
    project: str  # the project folder in the repository ("." for the root)
    sample: str = DEFAULT_SAMPLE
    deploy: str = DEPLOY_AWS  # "aws", "none", or a shell command run on the main branch
    branch: str = "main"
    install: str = f"driftloop=={__version__}"  # what pip installs (a version, a git URL...)

    @property
    def workflow_path(self) -> str:
        return (GITHUB_PATH if self.kind == "github" else AZURE_PATH).format(name=self.slug)

    @property
    def slug(self) -> str:
        name = PurePosixPath(self.project).name
        return name if name not in ("", ".") else "project"


def _under(project: str, path: str) -> str:
    return path if project in ("", ".") else f"{project.rstrip('/')}/{path}"


def feature_module_paths(spec: Spec) -> list[str]:
    """The files of ``features.function``'s module, relative to the project folder: the
    module file and, for a package path, the package's folder (both may exist)."""
    if spec.features.function is None:
        return []
    module = spec.features.function.partition(":")[0].replace(".", "/")
    return [f"{module}.py", f"{module}/**"]


def trigger_paths(spec: Spec, settings: CiSettings) -> list[str]:
    """What a push must touch to run the workflow: the spec, the feature module, the sample
    and the workflow itself."""
    inside = [SPEC_FILENAME, *feature_module_paths(spec), f"{settings.sample.rstrip('/')}/**"]
    return [_under(settings.project, p) for p in inside] + [settings.workflow_path]


def _check_commands(settings: CiSettings, temp: str) -> dict[str, str]:
    """The check job's shell steps (bash), by name; ``temp`` is the runner's scratch folder
    as the CI system spells it."""
    project = settings.project
    sample = _under(project, settings.sample)
    out = f"{temp}/{SAMPLE_DIR}"
    return {
        "Install driftloop": f'python -m pip install "{settings.install}"',
        "Validate the spec and build the sample project": (
            "# the spec is loaded and checked; the copy reads the sample and keeps its state,\n"
            "# outputs and registry in its own folder (never the shared ones)\n"
            f'python -m driftloop.export.ci sample-project "{project}" "{sample}" "{out}"'
        ),
        "A pass on the sample": (
            f'driftloop run -p "{out}"\ndriftloop status -p "{out}"\ndriftloop models -p "{out}"'
        ),
    }


def _deploy_commands(spec: Spec, settings: CiSettings) -> dict[str, str]:
    if settings.deploy == DEPLOY_AWS:
        out = "build/driftloop-aws"
        return {
            "Export the AWS stack": f'driftloop export aws -p "{settings.project}" --out {out}',
            "Apply the stack": (
                f"aws cloudformation deploy --template-file {out}/template.yaml "
                f"--stack-name driftloop-{spec.name.replace('_', '-').replace('.', '-')} "
                "--capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset"
            ),
        }
    return {"Deploy": settings.deploy}


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the scripts read as scripts); no anchors (each
    job spells its steps out)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(header: list[str], document: dict[str, Any]) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return "".join(f"# {line}\n" if line else "#\n" for line in header) + body


def _header(spec: Spec, settings: CiSettings) -> list[str]:
    lines = [
        f"Written by `driftloop init --ci {settings.kind}` (driftloop {__version__}) for "
        f"project {spec.name!r}.",
        "On a push touching the spec, the feature module or the sample: validate the spec, "
        "then one pass",
        f"on the sample files committed under {_under(settings.project, settings.sample)}/"
        "<source>/ (a few hundred rows each), in a",
        "local copy of the project: its state and registry are its own, never the shared ones.",
    ]
    if settings.deploy == DEPLOY_NONE:
        lines.append("No deploy step (--deploy none).")
    else:
        lines.append(f"On {settings.branch} only, after the checks pass: the deploy step.")
    lines.append(
        "CI never promotes a model: the promotion gate does, where the loop runs on real data."
    )
    return lines


def render_github(spec: Spec, settings: CiSettings) -> str:
    """A GitHub Actions workflow (``.github/workflows/driftloop-<project>.yml``)."""
    setup: list[dict[str, Any]] = [
        {"uses": "actions/checkout@v4"},
        {"uses": "actions/setup-python@v5", "with": {"python-version": PYTHON_VERSION}},
    ]
    check = _check_commands(settings, "${{ runner.temp }}")
    jobs: dict[str, Any] = {
        "check": {
            "runs-on": "ubuntu-latest",
            "timeout-minutes": 30,
            "steps": [*setup, *({"name": k, "run": v} for k, v in check.items())],
        }
    }
    if settings.deploy != DEPLOY_NONE:
        steps: list[dict[str, Any]] = [
            *setup,
            {"name": "Install driftloop", "run": check["Install driftloop"]},
        ]
        if settings.deploy == DEPLOY_AWS:
            steps.append(
                {
                    "name": "AWS credentials (OpenID Connect: no stored keys)",
                    "uses": "aws-actions/configure-aws-credentials@v4",
                    "with": {
                        "role-to-assume": "${{ secrets.AWS_ROLE_ARN }}",
                        "aws-region": "${{ vars.AWS_REGION }}",
                    },
                }
            )
        steps += [{"name": k, "run": v} for k, v in _deploy_commands(spec, settings).items()]
        jobs["deploy"] = {
            "needs": "check",
            "if": f"github.ref == 'refs/heads/{settings.branch}' && github.event_name == 'push'",
            "runs-on": "ubuntu-latest",
            "timeout-minutes": 30,
            "environment": "production",
            "permissions": {"contents": "read", "id-token": "write"},
            "concurrency": {"group": f"driftloop-deploy-{settings.slug}"},
            "steps": steps,
        }
    document = {
        "name": f"driftloop {spec.name}",
        "on": {
            "push": {"paths": trigger_paths(spec, settings)},
            "pull_request": {"paths": trigger_paths(spec, settings)},
            "workflow_dispatch": None,
        },
        "permissions": {"contents": "read"},
        "jobs": jobs,
    }
    return _dump(_header(spec, settings), document)


def render_azure(spec: Spec, settings: CiSettings) -> str:
    """An Azure Pipelines definition (``azure-pipelines-driftloop-<project>.yml``)."""
    setup: list[dict[str, Any]] = [
        {"checkout": "self"},
        {
            "task": "UsePythonVersion@0",
            "inputs": {"versionSpec": PYTHON_VERSION},
            "displayName": f"Python {PYTHON_VERSION}",
        },
    ]
    check = _check_commands(settings, "$(Agent.TempDirectory)")

    def script(name: str, text: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        step: dict[str, Any] = {"bash": f"set -euo pipefail\n{text}", "displayName": name}
        if env:
            step["env"] = env
        return step

    stages: list[dict[str, Any]] = [
        {
            "stage": "check",
            "displayName": "Validate the spec, one pass on the sample",
            "jobs": [
                {
                    "job": "check",
                    "timeoutInMinutes": "30",
                    "steps": [*setup, *(script(k, v) for k, v in check.items())],
                }
            ],
        }
    ]
    if settings.deploy != DEPLOY_NONE:
        # AWS keys come from secret pipeline variables, mapped in explicitly (Azure never
        # passes secrets to scripts on its own)
        env = (
            {
                "AWS_ACCESS_KEY_ID": "$(AWS_ACCESS_KEY_ID)",
                "AWS_SECRET_ACCESS_KEY": "$(AWS_SECRET_ACCESS_KEY)",
                "AWS_DEFAULT_REGION": "$(AWS_REGION)",
            }
            if settings.deploy == DEPLOY_AWS
            else None
        )
        deploy_steps = [script("Install driftloop", check["Install driftloop"])]
        deploy_steps += [script(k, v, env) for k, v in _deploy_commands(spec, settings).items()]
        stages.append(
            {
                "stage": "deploy",
                "displayName": f"Deploy ({settings.branch} only)",
                "dependsOn": "check",
                "condition": (
                    "and(succeeded(), eq(variables['Build.SourceBranch'], "
                    f"'refs/heads/{settings.branch}'), ne(variables['Build.Reason'], "
                    "'PullRequest'))"
                ),
                "jobs": [
                    {
                        "job": "deploy",
                        "timeoutInMinutes": "30",
                        "steps": [*setup, *deploy_steps],
                    }
                ],
            }
        )
    paths = {"include": trigger_paths(spec, settings)}
    document = {
        "name": f"driftloop {spec.name} $(Date:yyyyMMdd)$(Rev:.r)",
        "trigger": {"branches": {"include": ["*"]}, "paths": paths},
        "pr": {"branches": {"include": ["*"]}, "paths": paths},
        "pool": {"vmImage": "ubuntu-latest"},
        "stages": stages,
    }
    return _dump(_header(spec, settings), document)


def render(spec: Spec, settings: CiSettings) -> str:
    return (
        render_github(spec, settings) if settings.kind == "github" else render_azure(spec, settings)
    )


def repository_root(start: Path) -> Path:
    """The repository the project is in: the nearest folder up with ``.git``, else the
    project folder itself (a project not yet under git)."""
    here = start.resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here


def write_workflow(
    project: Path,
    kind: str,
    *,
    deploy: str = DEPLOY_AWS,
    sample: str = DEFAULT_SAMPLE,
    force: bool = False,
) -> Path:
    """Write the workflow for the project at ``project`` into its repository (the nearest
    folder up holding ``.git``); returns the file written."""
    if kind not in KINDS:
        raise InitError(f"--ci must be github or azure, got {kind!r}")
    spec = load_spec(project)
    root = repository_root(project)
    relative = project.resolve().relative_to(root).as_posix()
    settings = CiSettings(
        kind="github" if kind == "github" else "azure",
        project=relative or ".",
        sample=PurePosixPath(sample).as_posix(),
        deploy=deploy.strip() or DEPLOY_NONE,
    )
    path = root / settings.workflow_path
    if path.exists() and not force:
        raise InitError(
            f"{path} already exists; pass --force to write it again, or edit it by hand"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(spec, settings), encoding="utf-8")
    return path


# -- the sample project, built on the CI runner ----------------------------------------


def local_spec(data: dict[str, Any]) -> dict[str, Any]:
    """A spec (as read from YAML) made local: each source reads ``data/raw/<name>/`` with
    its own pattern's file name part; no state URL, outputs, storage or tracking URI, so the
    copy's state, outputs and registry are in its own folder."""
    out = {k: v for k, v in data.items() if k not in ("state", "outputs", "storage", "engine")}
    sources = []
    for source in data.get("sources") or []:
        tail = str(source.get("path", "*")).rstrip("/").rpartition("/")[2] or "*"
        sources.append({**source, "path": f"data/raw/{source['name']}/{tail}"})
    out["sources"] = sources
    if isinstance(data.get("model"), dict):
        out["model"] = {k: v for k, v in data["model"].items() if k != "tracking_uri"}
    return out


def sample_project(project: Path, sample: Path, out: Path) -> Spec:
    """Build the sample project in ``out``: the spec made local, the project's Python files
    (the feature module) and the sample's files under ``data/raw/<source>/``. The spec is
    loaded and checked first (a bad spec fails here, with its error)."""
    spec = load_spec(project)
    names = [s.name for s in spec.sources]
    if not sample.is_dir():
        raise InitError(
            f"{sample}: no sample folder; commit a few hundred rows of each source under "
            f"{sample}/<source>/ (sources: {', '.join(names)}), or pass --ci-sample to "
            "driftloop init --ci"
        )
    missing = [n for n in names if not any(p.is_file() for p in (sample / n).glob("*"))]
    if missing:
        raise InitError(
            f"{sample}: no sample file for source(s) {', '.join(missing)}; put a few hundred "
            f"rows of each under {sample}/<source>/ (expected folders: {', '.join(names)})"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    raw = yaml.safe_load((project / SPEC_FILENAME).read_text(encoding="utf-8"))
    (out / SPEC_FILENAME).write_text(
        yaml.safe_dump(local_spec(raw), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    for path in project.rglob("*.py"):
        relative = path.relative_to(project)
        if relative.parts[0] in ("data", ".driftloop", "ci") or relative.parts[0].startswith("."):
            continue
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / relative)
    for name in names:
        shutil.copytree(sample / name, out / "data" / "raw" / name)
    return load_spec(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftloop.export.ci")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "sample-project", help="validate the spec and build the local sample project"
    )
    build.add_argument("project", type=Path)
    build.add_argument("sample", type=Path)
    build.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        spec = sample_project(args.project, args.sample, args.out)
    except DriftloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"spec {spec.name!r} is valid; sample project in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
