"""The ``driftloop`` command line.

Exit codes: 0 success (quarantined rows are reported, not failures); 1 a stage failed, now
or earlier and not yet fixed, retried or dismissed (``driftloop batches``);
2 bad input to driftloop itself (spec, arguments, project folder); 3 ``driftloop monitor``
found dataset, target or prediction drift or degraded performance (so cron and CI can tell
it from an error); 4 ``driftloop monitor`` found a column drifted, below the dataset drift
threshold (a warning: a unit change upstream, say; the retrain policy does not act on it);
5 the machine, not the project: the state database stayed locked by another process past
the wait (``DRIFTLOOP_STATE_LOCK_SECONDS``, 30 s), the disk is full, or S3 or the model
registry did not answer; nothing was lost,
run again once the cause is gone (``driftloop stage`` also exits 5 when its call failed on
anything but its data, or another worker holds it: what an orchestrator retries). Errors
print as one line; ``--verbose`` adds the traceback. Heavy libraries load inside the
commands, so ``--help`` answers fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from driftloop.pipeline import RunResult

app = typer.Typer(
    name="driftloop",
    help="A self-updating ML lifecycle for tabular data: ingest, validate, features, and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProjectOpt = Annotated[
    Path, typer.Option("--project", "-p", help="Project folder (holds driftloop.yaml).")
]
TaskTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--task-token",
        envvar="DRIFTLOOP_TASK_TOKEN",
        show_envvar=False,
        help="A Step Functions task token (or DRIFTLOOP_TASK_TOKEN): the result goes back "
        "with SendTaskSuccess, an error with SendTaskFailure; see driftloop export aws.",
    ),
]
_state: dict[str, Any] = {"verbose": False, "unmatched_shown": set(), "refused_shown": set()}


def unmatched_text(item: dict[str, str]) -> str:
    from driftloop.core.text import shown

    if "problem" in item:  # a name that is not UTF-8
        where = f"{shown(item['path'])} in source {item['source']}'s folder"
        return f"unmatched: {where}: {item['problem']}"
    return (
        f"unmatched: {shown(item['path'])} is in source {item['source']}'s folder but does not "
        f"match its pattern {item['pattern']!r}, so it is not read; rename it, or widen "
        f"sources[].path in driftloop.yaml"
    )


EXIT_STAGE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DRIFT = 3  # driftloop monitor: drift detected or performance degraded
NOTHING_TO_DO = "nothing to do: every batch is up to date"
EXIT_COLUMN_DRIFT = 4  # driftloop monitor: only columns drifted, below the dataset threshold
EXIT_RETRY_LATER = 5  # the state database locked past the wait, the disk full, S3 down
EXIT_NOTHING_TO_MONITOR = 6  # driftloop monitor: no champion yet, or no prediction logged


def _print_version(value: bool) -> None:
    if value:
        from driftloop import __version__

        typer.echo(f"driftloop {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print driftloop's version and exit.",
        ),
    ] = False,
) -> None:
    _state["verbose"] = verbose
    from driftloop.core.redact import redact_standard_streams

    # Everything the CLI prints, logs or traces goes out without a URI's password (an
    # MLflow error quotes the tracking URI it failed on).
    redact_standard_streams()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _name(value: object) -> str:
    """A file name, key or path from outside, ready for ``console.print``: control
    characters escaped (a newline cannot forge a line, an escape code cannot drive the
    terminal) and rich markup shown as text (``[red]`` in a name is not a style)."""
    from rich.markup import escape

    from driftloop.core.text import shown

    return escape(shown(value))


@app.command()
def init(
    project: ProjectOpt = Path(),
    from_file: Annotated[
        str | None,  # a path or a URL: a Path would fold s3:// into s3:/
        typer.Option("--from", help="Sample CSV/Parquet file to infer the spec from."),
    ] = None,
    target: Annotated[str | None, typer.Option(help="Target column to predict.")] = None,
    time_column: Annotated[str | None, typer.Option(help="Time column (optional).")] = None,
    name: Annotated[str | None, typer.Option(help="Project name (default: folder name).")] = None,
    task: Annotated[
        str | None, typer.Option(help="classification or regression (default: inferred).")
    ] = None,
    example: Annotated[
        str | None, typer.Option(help="Write a built-in example project instead (e.g. 'shop').")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing driftloop.yaml.")] = False,
    header: Annotated[
        bool | None,
        typer.Option(
            "--header/--no-header",
            help="Whether the CSV's first row is a header (default: yes, unless it looks "
            "like data, which init reports).",
        ),
    ] = None,
    names: Annotated[
        str | None,
        typer.Option(help="With --no-header: the column names, comma-separated (a,b,c)."),
    ] = None,
    ci: Annotated[
        str | None,
        typer.Option(
            "--ci",
            help="Also write a CI workflow: github or azure (alone: for the existing "
            "driftloop.yaml). It validates the spec, runs a pass on the sample, deploys on main.",
        ),
    ] = None,
    deploy: Annotated[
        str,
        typer.Option(
            help="With --ci: the deploy step on main: 'aws' (apply the stack 'driftloop "
            "export aws' writes), 'none', or a shell command of your own.",
        ),
    ] = "aws",
    ci_sample: Annotated[
        str,
        typer.Option(
            help="With --ci: the folder, in the project, of the sample files the pass reads "
            "(one subfolder per source).",
        ),
    ] = "ci/sample",
) -> None:
    """Write driftloop.yaml, inferred from a sample file or from a built-in example; with
    --ci, a CI workflow too (or only that, in a project that has a driftloop.yaml)."""
    from driftloop.core.errors import DriftloopError

    console = _console()
    if ci is not None and ci not in ("github", "azure"):
        _fail_text(f"--ci must be github or azure, got {ci!r}")
    ci_only = ci is not None and example is None and from_file is None and target is None
    path: Path | None = None
    try:
        if not ci_only:
            project.mkdir(parents=True, exist_ok=True)
        if example is not None:
            from driftloop.init import init_example

            path = init_example(project, example, force=force)
        elif not ci_only:  # --ci alone: only the workflow, for the existing driftloop.yaml
            if from_file is None or target is None:
                raise typer.BadParameter("pass --from FILE and --target COLUMN, or --example NAME")
            if task not in (None, "classification", "regression"):
                raise typer.BadParameter("--task must be classification or regression")
            from driftloop.init import init_from_file

            notes: list[str] = []
            path = init_from_file(
                project,
                from_file,
                target,
                time_column=time_column,
                name=name,
                task=task,
                force=force,
                notes=notes,
                header=header,
                names=[n.strip() for n in names.split(",")] if names is not None else None,
            )
            for line in notes:
                console.print(line, markup=False)
        if path is not None:
            console.print(f"wrote {path}; next: driftloop run -p {project}")
        if ci is not None:
            from driftloop.export.ci import write_workflow

            written = write_workflow(project, ci, deploy=deploy, sample=ci_sample, force=force)
            console.print(
                f"wrote {_name(written)}; commit it with sample files under "
                f"{_name(project / ci_sample)}/<source>/"
            )
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)


@app.command()
def run(project: ProjectOpt = Path()) -> None:
    """One full pass of the loop: ingest new raw files; prep (validate, clean, quarantine)
    and features for every batch not up to date; check each new batch against the champion
    (drift, and performance from its labels); if the retrain policy says so, train a
    challenger and run the promotion gate, which promotes it or keeps the champion. Exits 0
    when the pass completes, 1 while a failure is unresolved (this run's or an earlier
    one's: see 'driftloop batches'), 2 for a bad spec or arguments (or a bucket or
    credentials S3 refuses), 5 when the state database stayed locked by another process,
    the disk is full or an S3 endpoint did not answer (run again later)."""
    from driftloop.orchestration.settled import quick_settled

    settled = quick_settled(project)
    if settled is not None:  # answered without loading the spec or the state layer
        for item in settled.unmatched:
            typer.echo(f"  {unmatched_text(item)}")
        if not settled.unmatched:
            typer.echo(NOTHING_TO_DO)
        return
    from driftloop.core.errors import DriftloopError
    from driftloop.pipeline import run as run_pipeline

    try:
        result = run_pipeline(project, quick=False)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    except OSError as exc:
        from driftloop.core.errors import disk_full, is_disk_full

        if not is_disk_full(exc):
            raise
        _fail(disk_full(f"driftloop run -p {project}", exc), EXIT_RETRY_LATER)
    print_run(result, project=project)
    if result.unresolved:
        raise typer.Exit(EXIT_STAGE_FAILED)


def print_run(
    result: RunResult, *, quiet_when_idle: bool = False, project: Path | None = None
) -> None:
    """The run summary: what was ingested, what each stage did, what was quarantined."""
    from driftloop.core.layout import Layout

    layout = Layout(project or Path())  # where its outputs are (on S3 for outputs: s3://...)
    console = _console()
    ing = result.ingest
    if ing.batch is not None:
        console.print(f"ingested {len(ing.new_files)} new file(s) as batch {ing.batch.batch_id}")
    for r in ing.reuploads:
        console.print(
            f"  skipped {_name(r.path)}: same content as {_name(r.same_as)} (already ingested)"
        )
    for path in ing.still_writing:
        console.print(f"  waiting for {_name(path)}: still being written; the next run takes it")
    for problem in ing.unreadable:
        console.print(
            f"  [red]cannot read[/red] {_name(problem)}; fix its permissions, it is retried"
        )
    for problem in ing.refused:  # each once per process, as unmatched files
        if problem not in _state["refused_shown"]:
            _state["refused_shown"].add(problem)
            console.print(f"  [red]refused[/red] {_name(problem)}")
    for problem in ing.changed:  # a file changed in place: each once per process
        if problem not in _state["refused_shown"]:
            _state["refused_shown"].add(problem)
            console.print(f"  [red]not ingested[/red] {_name(problem)}")
    for item in result.unmatched:  # each once per process (watch makes many passes)
        if item["path"] in _state["unmatched_shown"]:
            continue
        _state["unmatched_shown"].add(item["path"])
        console.print(f"  {unmatched_text(item)}", markup=False)
    for decision in result.applied:
        console.print(
            f"applied a recorded decision the registry had missed: v{decision['version']} "
            f"{decision['decision']} ({decision['reason']})"
        )
    for line in result.reconciled:
        console.print(f"after an interruption: {line}", markup=False)
    if not result.did_work and not quiet_when_idle and not (result.unmatched or ing.changed):
        console.print(NOTHING_TO_DO)
    for report in result.reports:
        if report.outcome == "cached":
            continue
        if report.outcome == "skipped":
            console.print(f"{report.stage} {report.batch_id}: skipped: {report.error}")
            continue
        if report.outcome == "waiting":
            console.print(
                f"{report.stage} {report.batch_id}: waiting to retry after a transient "
                f"error ({report.error})"
            )
            continue
        if report.outcome in ("failed", "failed-earlier"):
            earlier = (
                " (earlier run; unchanged since)" if report.outcome == "failed-earlier" else ""
            )
            console.print(f"[red]FAILED[/red] {report.stage} {report.batch_id}{earlier}: ", end="")
            console.print(str(report.error), markup=False)
            continue
        if report.outcome == "dismissed":
            console.print(
                f"{report.stage} {report.batch_id}: failed, dismissed by a user (left out; "
                f"'driftloop batches retry {report.batch_id}' runs it again)",
                markup=False,
            )
            continue
        m = report.manifest
        if report.stage == "prep":
            console.print(
                f"prep {report.batch_id}: {m['rows_in']} rows in, {m['rows_ok']} ok, "
                f"{m['rows_quarantined']} quarantined, {m['rows_duplicate']} duplicate "
                f"({report.seconds:.2f}s)"
            )
            for f in m["files_quarantined"]:
                console.print(f"  quarantined file {_name(f['path'])}: {_name(f['error'])}")
            for w in m["warnings"]:
                console.print(f"  note: {_name(w)}")
            if m.get("new_values") or m.get("outliers"):
                from driftloop.prep.notes import describe_new_values, describe_outliers

                for item in m.get("new_values") or []:
                    proposed = item["proposed"]
                    console.print(
                        f"  kept and reported: {describe_new_values(item)}; proposed: "
                        f"{proposed['key']}: {proposed['allowed']}",
                        markup=False,
                    )
                for item in m.get("outliers") or []:
                    console.print(f"  kept and reported: {describe_outliers(item)}", markup=False)
            from driftloop.prep.core import reason_lines

            for line in reason_lines(m.get("quarantine_reasons", [])):
                console.print(line, markup=False)
            if m["rows_quarantined"]:
                where = layout.relative(layout.quarantine / report.batch_id)
                console.print(f"  rows and reasons: {where}/")
        elif report.stage == "features":
            console.print(
                f"features {report.batch_id}: {m['rows']} rows, {len(m['schema'])} columns "
                f"({report.seconds:.2f}s)"
            )
        elif report.stage == "monitor":
            summary = m["summary"]
            console.print(
                f"monitor {report.batch_id} against champion v{m['champion_version']}: "
                f"{'; '.join(summary['messages'])} ({report.seconds:.2f}s)"
            )
        elif report.stage == "ingest":
            console.print(f"ingested {len(m['new_files'])} new file(s) as batch {report.batch_id}")
            for problem in m.get("refused", []):
                console.print(f"  [red]refused[/red] {_name(problem)}")
            for problem in m.get("changed", []):
                console.print(f"  [red]not ingested[/red] {_name(problem)}")
        elif report.stage == "promote":
            d = m["decision"]
            trained_now = any(r.stage == "train" and r.outcome == "ran" for r in result.reports)
            lead = "  " if trained_now else f"promote: {m['model']} v{m['version']}: "
            console.print(f"{lead}{d['decision'].upper()}: {d['reason']}")
        else:
            if result.retrain:
                console.print(f"retrain requested: {result.retrain}")
            metric = m["metric"]
            value, base = m["metrics"].get(metric, 0.0), m["baseline"].get(metric, 0.0)
            console.print(
                f"train: {m['model']} v{m['version']} on {m['train_rows']} rows ({m['split']} "
                f"split, {m['holdout_rows']} held out): {metric} {value:.4f}, "
                f"baseline {base:.4f} ({report.seconds:.2f}s)"
            )
            if m.get("refit_on_all"):
                console.print(f"  refit on all {m['served_rows']} rows of the window to serve")
            if m.get("registry_warning"):
                console.print(f"WARNING: {m['registry_warning']}", markup=False)
    if result.waiting:
        console.print(f"no training: {result.waiting}")
    if result.unresolved:
        batches_ = sorted({r.batch_id for r in result.unresolved})
        console.print(
            f"{len(result.unresolved)} unresolved failure(s) ({', '.join(batches_)}): every "
            "run exits 1 until each is fixed, retried or dismissed; see 'driftloop batches'"
        )


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="ingest, prep, features, monitor, train or promote.")],
    project: ProjectOpt = Path(),
    batch: Annotated[
        str | None, typer.Option("--batch", "-b", help="The batch (prep, features, monitor).")
    ] = None,
    champion: Annotated[
        str | None,
        typer.Option(
            "--champion", help="monitor: the version to check against (default: the champion)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The stage's manifest as JSON.")] = False,
    task_token: TaskTokenOpt = None,
) -> None:
    """Run one stage call, as an orchestrator's task would: idempotent, safe on any worker."""
    from driftloop.core.errors import DriftloopError
    from driftloop.export import aws_task
    from driftloop.pipeline import plan as make_plan
    from driftloop.pipeline import run_stage

    try:
        with aws_task.reporting(task_token):
            report = run_stage(project, name, batch_id=batch, champion=champion)
            aws_task.report_stage(task_token, report, lambda: make_plan(project))
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if as_json:
        typer.echo(json.dumps(report.to_json(), default=str, sort_keys=True))
    else:
        if report.outcome == "cached":
            what = "no new complete file" if name == "ingest" else "up to date (cache hit)"
            _console().print(f"{name} {report.batch_id}: {what}")
        from driftloop.orchestration.loop import RunResult

        print_run(
            RunResult(ingest=_no_ingest(), reports=[report]), quiet_when_idle=True, project=project
        )
    if report.retry or report.outcome == "waiting":  # the machine, or another worker has it
        raise typer.Exit(EXIT_RETRY_LATER)
    if report.outcome in ("failed", "failed-earlier"):
        raise typer.Exit(EXIT_STAGE_FAILED)


@app.command()
def plan(
    project: ProjectOpt = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="The plan as JSON.")] = False,
    task_token: TaskTokenOpt = None,
) -> None:
    """The stage calls a pass would make now, in waves of independent calls (nothing runs)."""
    from driftloop.core.errors import DriftloopError
    from driftloop.export import aws_task
    from driftloop.pipeline import plan as make_plan

    try:
        with aws_task.reporting(task_token):
            found = make_plan(project)
            if task_token:
                aws_task.send_success(task_token, aws_task.plan_output(found))
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if as_json:
        typer.echo(json.dumps(found.to_json(), sort_keys=True))
        return
    console = _console()
    if not found.waves:
        console.print("nothing to do: every output is up to date")
    for i, wave in enumerate(found.waves, 1):
        console.print(f"wave {i}:")
        for call in wave:
            why = f"  # {call.reason}" if call.reason else ""
            console.print(f"  driftloop stage {call}{why}")
    if found.waiting:
        console.print(f"no training: {found.waiting}")


def _no_ingest() -> Any:
    from driftloop.ingest.stage import IngestResult

    return IngestResult(batch=None)


@app.command()
def status(
    project: ProjectOpt = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Champion, the loop, pending work, the last drift verdict, recent runs and events."""
    from driftloop.core.errors import DriftloopError
    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.core.state import state_exists
    from driftloop.orchestration.status import project_status

    layout = Layout(project)
    try:
        url = load_spec(project).state.url
    except DriftloopError:
        url = None  # project_status says what is wrong with the spec
    if not state_exists(layout.state_db, url):
        _fail_text(f"{layout.state_db}: no state yet; run 'driftloop run -p {project}' first")
    try:
        payload = project_status(project)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return
    print_status(payload)


def print_status(s: dict[str, Any]) -> None:
    console = _console()
    champ = s["champion"]
    if champ["version"]:
        served = champ["served"]
        serving = (
            f"; last served v{served['version']} (pid {served['pid']}, {served['at'][:19]})"
            if served
            else ""
        )
        console.print(
            f"champion: {s['project']} v{champ['version']} since {champ['since'][:19]} "
            f"({champ['reason']}){serving}"
        )
    else:
        console.print(f"champion: none yet for {s['project']}")
    lost = s.get("registry_history_lost")
    if lost:
        console.print(f"WARNING ({lost['at'][:19]}): {lost['message']}", markup=False)
    watch = s["watch"]
    if watch and watch["alive"]:
        console.print(f"watch: running (pid {watch['pid']} on {watch['host']})")
    else:
        console.print("watch: not running")
    pending = s["pending"]
    console.print(
        f"batches: {s['batches']}; {len(pending['batches_since_last_training'])} since the "
        f"last training; {len(pending['batches'])} with missing outputs; "
        f"{len(pending['files_not_ingested'])} raw file(s) not ingested yet"
    )
    for item in pending.get("files_unmatched", []):
        console.print(unmatched_text(item), markup=False)
    for path in pending.get("files_changed_in_place", []):
        console.print(
            f"not ingested: {_name(path)} changed in place since it was ingested; put the "
            "original content back and land new rows under a new file name"
        )
    changes = s.get("contract_changes") or []
    if changes:
        console.print(
            "contract changes proposed (new values kept and scored; the spec does not list "
            "them yet):"
        )
        for c in changes:
            values = ", ".join(
                f"{v['value']!r} ({v['rows']} row(s)"
                + (f", variant of {v['variant_of']!r})" if v["variant_of"] else ")")
                for v in c["values"]
            )
            console.print(
                f"  {c['column']}: {values} in {len(c['batches'])} batch(es); to accept them: "
                f"{c['proposed']['key']}: {c['proposed']['allowed']}",
                markup=False,
            )
    for stale in s.get("stale_batches", []):  # outputs kept from an earlier run
        if stale["dismissed"]:
            console.print(
                f"stale: batch {stale['batch_id']} (dismissed): training reads its rows as "
                "they were prepared before",
                markup=False,
            )
        else:
            console.print(f"stale: {stale['reason']}", markup=False)
    verdict = s["last_drift_verdict"]
    if verdict:
        console.print(
            f"last monitoring ({verdict['generated_at'][:19]}, v{verdict['model_version']}, "
            f"{_name(verdict['current'])}): {'; '.join(verdict['messages'])}"
        )
    console.print("recent stage runs:")
    for run_ in s["stage_runs"][:10]:
        seconds = f"{run_['seconds']:.2f}s" if run_["seconds"] is not None else "-"
        console.print(f"  {run_['stage']:<9} {run_['batch_id']}  {run_['status']:<9} {seconds}")
    console.print("recent events:")
    for e in s["events"][-10:]:
        detail = e.get("batch_id") or e.get("version") or e.get("reason") or ""
        console.print(f"  {e['ts'][:19]}  {e['type']:<18} {_name(detail)}")


batches_app = typer.Typer(
    help="Failed batches: list them with their reasons, retry or dismiss one.",
    no_args_is_help=False,
)
app.add_typer(batches_app, name="batches")


@batches_app.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The failed stage runs still in the way (each run exits 1 while one is unresolved),
    with their reasons, and the ones a user dismissed, with who and why."""
    ctx.obj = project
    if ctx.invoked_subcommand is not None:
        return
    from driftloop.core.errors import DriftloopError
    from driftloop.orchestration.failures import batch_failures

    _require_state(project)
    try:
        found = batch_failures(project)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if as_json:
        sys.stdout.write(json.dumps(found, indent=2, default=str) + "\n")
        return
    console = _console()
    unresolved, dismissed = found["unresolved"], found["dismissed"]
    console.print(
        f"{found['batches']} batch(es); {len(unresolved)} unresolved failure(s), "
        f"{len(dismissed)} dismissed"
    )
    for f in unresolved:
        tries = f" after {f['attempts']} attempt(s)" if f["status"] == "error" else ""
        console.print(f"[red]FAILED[/red] {f['stage']} {f['batch_id']}{tries}:")
        console.print("  " + str(f["error"]).replace("\n", "\n  "), markup=False)
    for f in dismissed:
        d = f["dismissed"] or {}
        console.print(
            f"dismissed {f['stage']} {f['batch_id']} by {d.get('by', '?')} "
            f"({str(d.get('at', ''))[:19]}): {d.get('reason', '?')}",
            markup=False,
        )
        console.print("  " + str(f["error"]).splitlines()[0], markup=False)
    if unresolved:
        console.print(
            "fix the data or the spec and run again, or: driftloop batches retry BATCH | "
            "driftloop batches dismiss BATCH --reason TEXT"
        )


@batches_app.command("retry")
def batches_retry(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="The batch whose failed calls run again.")],
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Run a batch's failed (or dismissed) stage calls again on the next pass."""
    from driftloop.core.errors import DriftloopError
    from driftloop.orchestration.failures import retry

    _require_state(ctx.obj)
    try:
        done = retry(ctx.obj, batch, actor=by)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    for d in done:
        _console().print(
            f"{d['stage']} {d['batch_id']}: runs again on the next pass (asked by {d['actor']}); "
            f"now: driftloop run -p {ctx.obj}",
            markup=False,
        )


@batches_app.command("dismiss")
def batches_dismiss(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="The batch whose failure is accepted.")],
    reason: Annotated[str, typer.Option(help="Why, for the record (required).")],
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Accept a batch's failure: the loop leaves it out and 'run' stops exiting 1 for it
    (until its data or the spec changes, or 'driftloop batches retry')."""
    from driftloop.core.errors import DriftloopError
    from driftloop.orchestration.failures import dismiss

    _require_state(ctx.obj)
    try:
        done = dismiss(ctx.obj, batch, reason=reason, actor=by)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    for d in done:
        _console().print(
            f"{d['stage']} {d['batch_id']}: dismissed by {d['actor']}: {d['reason']}",
            markup=False,
        )


def _require_state(project: Path) -> None:
    from driftloop.core.errors import DriftloopError
    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.core.state import state_exists

    layout = Layout(project)
    try:
        url = load_spec(project).state.url
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if not state_exists(layout.state_db, url):
        _fail_text(f"{layout.state_db}: no state yet; run 'driftloop run -p {project}' first")


models_app = typer.Typer(
    help="Model versions, aliases and promotion history; promote or roll back.",
    no_args_is_help=False,
)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    project: ProjectOpt = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List model versions with metrics, aliases and the decision history."""
    ctx.obj = project
    if ctx.invoked_subcommand is not None:
        return
    from driftloop.core.errors import DriftloopError
    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.core.state import StateDB, state_exists
    from driftloop.models.registry import open_registry

    layout = Layout(project)
    try:
        spec = load_spec(project)
        # A read-only look: a registry that was never written is simply empty.
        found = [dataclasses.asdict(v) for v in open_registry(spec, layout).versions()]
        history = []
        if state_exists(layout.state_db, spec.state.url):
            with StateDB(layout.state_db, url=spec.state.url) as db:
                history = db.decisions(spec.name)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {"model": spec.name, "versions": found, "decisions": history}, indent=2, default=str
            )
            + "\n"
        )
        return
    console = _console()
    if not found:
        console.print(f"no versions of model {spec.name!r} yet; 'driftloop run' trains one")
        return
    metric = spec.metric
    console.print(f"model {spec.name} (metric {metric})")
    for v in found:
        aliases = ", ".join(v["aliases"]) or "-"
        value = v["metrics"].get(f"holdout_{metric}")
        base = v["metrics"].get(f"baseline_{metric}")
        shown = f"{value:.4f}" if value is not None else "-"
        baseline = f"{base:.4f}" if base is not None else "-"
        decision = v["tags"].get("driftloop.decision", "-")
        learned = v["tags"].get("driftloop.served_rows")
        rows = f"  learned from {learned} rows" if learned else ""
        if v["tags"].get("driftloop.refit_on_all") == "true":
            rows += f" (holdout {v['tags'].get('driftloop.holdout_rows')} included)"
        console.print(
            f"  v{v['version']:<4} {aliases:<22} {metric} {shown}  baseline {baseline}  "
            f"{decision}{rows}"
        )
    console.print("history:")
    for d in history:
        console.print(
            f"  {d['ts'][:19]}  v{d['version']} {d['decision']} by {d['actor']}: {d['reason']}"
        )


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit record.")] = "manual promotion",
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
    force: Annotated[
        bool,
        typer.Option(help="Promote even a version whose holdout metric is undefined (NaN)."),
    ] = False,
) -> None:
    """Point the champion alias at VERSION, with an audit record."""
    _move_champion(ctx.obj, version=version, why=reason, actor=by, force=force)


@models_app.command("rollback")
def models_rollback(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why, for the audit record.")] = "manual rollback",
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Point the champion alias back at the previous champion, with an audit record."""
    _move_champion(ctx.obj, version=None, why=reason, actor=by)


def _move_champion(
    project: Path, *, version: str | None, why: str, actor: str | None, force: bool = False
) -> None:
    from driftloop.core.errors import DriftloopError
    from driftloop.core.layout import Layout
    from driftloop.core.spec import load_spec
    from driftloop.core.state import StateDB
    from driftloop.promotion.alias import manual_alias_change

    layout = Layout(project)
    try:
        spec = load_spec(project)
        with StateDB(layout.state_db, url=spec.state.url) as db:
            decision = manual_alias_change(
                spec, layout, db, version=version, why=why, actor=actor, force=force
            )
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    _console().print(
        f"champion of {spec.name}: v{decision['version']} (was v{decision['champion_version']}); "
        f"{decision['decision']} by {decision['actor']}: {decision['reason']}"
    )


@app.command()
def serve(
    project: ProjectOpt = Path(),
    host: Annotated[str | None, typer.Option(help="Address (default: serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serving.port).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: serving.workers).")
    ] = None,
    ui: Annotated[bool, typer.Option(help="Serve the dashboard under /ui too.")] = True,
) -> None:
    """Serve the champion over HTTP (/predict, /feedback, /model, /metrics) and the
    dashboard (/ui); follow promotions."""
    from driftloop.core.errors import DriftloopError
    from driftloop.core.spec import load_spec
    from driftloop.serving.auth import check_binding, load_tokens
    from driftloop.serving.run import APP_FACTORY
    from driftloop.serving.run import serve as run_server

    try:
        spec = load_spec(project)
        check_binding(host or spec.serving.host, load_tokens())
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    settings = spec.serving
    where = f"http://{host or settings.host}:{settings.port if port is None else port}"
    _console().print(
        f"serving the champion of {spec.name} on {where} ({workers or settings.workers} "
        f"worker(s)); API docs at {where}/docs"
        + (f"; the dashboard at {where}/ui" if ui else "")
        + "; Ctrl-C stops"
    )
    factory = "driftloop.ui.app:serving_app_from_environment" if ui else APP_FACTORY
    try:
        run_server(project, host=host, port=port, workers=workers, app_factory=factory)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)


@app.command()
def ui(
    project: ProjectOpt = Path(),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8050,
    metrics_url: Annotated[
        str | None,
        typer.Option(help="The server's /metrics for the Now view (default: serving's address)."),
    ] = None,
) -> None:
    """The dashboard alone (no model loaded): Now, Data, Models, Drift, Events under /ui."""
    import uvicorn

    from driftloop.core.errors import DriftloopError
    from driftloop.serving.auth import check_binding, load_tokens
    from driftloop.ui.app import create_ui_app

    try:
        check_binding(host, load_tokens())
        app_ = create_ui_app(project.resolve(), metrics_url=metrics_url)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    _console().print(
        f"the dashboard of {project.resolve()} on http://{host}:{port}/ui; Ctrl-C stops"
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def monitor(
    project: ProjectOpt = Path(),
    current: Annotated[
        str | None,
        typer.Option(
            "--current",
            help="A CSV/Parquet batch, or a data/processed|features/<batch> folder (its "
            "s3:// URL for outputs on S3; default: the prediction log).",
        ),
    ] = None,
    days: Annotated[
        float | None,
        typer.Option(help="Prediction-log window in days, ending now (default: the spec's)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
    task_token: TaskTokenOpt = None,
) -> None:
    """Drift and performance of the champion: exit 0 if no column drifted and nothing
    degraded, 3 for dataset, target or prediction drift or degradation, 4 when only some
    columns drifted (below the dataset threshold), 6 when there is nothing to monitor (no
    champion yet, or no prediction in the log's window: a quiet hour, said, not failed, for
    a schedule). A raw file goes through the source's prep first: only the rows prep would
    keep are scored."""
    from driftloop.core.errors import DriftloopError, NothingToMonitorError
    from driftloop.export import aws_task
    from driftloop.monitoring.run import monitor as run_monitor

    nothing = None
    try:
        with aws_task.reporting(task_token):
            try:
                result = run_monitor(project, current=current, days=days)
            except NothingToMonitorError as exc:
                nothing = str(exc)
            if task_token:  # the machine's branch; with nothing to monitor: neither, and why
                aws_task.send_success(
                    task_token,
                    aws_task.monitor_output(result)
                    if nothing is None
                    else aws_task.nothing_output(nothing),
                )
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    if nothing is not None:
        _nothing_to_monitor(nothing, as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.report, indent=2, sort_keys=True) + "\n")
    else:
        print_monitor(result.report)
    if result.exit_code:
        raise typer.Exit(result.exit_code)  # EXIT_DRIFT, or EXIT_COLUMN_DRIFT (a warning)


def _nothing_to_monitor(why: str, as_json: bool) -> NoReturn:
    """Exit 6, saying why: with ``--json`` a report a scheduler reads like any other (no
    drift, no decay), else one line on stderr."""
    if as_json:
        summary = {"drift_detected": False, "performance_degraded": False, "messages": [why]}
        answer = {"nothing_to_monitor": why, "summary": summary, "current": {"rows": 0}}
        sys.stdout.write(json.dumps(answer, indent=2, sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"nothing to monitor: {why}\n")
    raise typer.Exit(EXIT_NOTHING_TO_MONITOR)


def print_monitor(report: dict[str, Any]) -> None:
    """The monitoring summary: what was compared, what drifted, performance, the report.
    A value the report could not compute (null) prints as ``undefined``."""
    from driftloop.monitoring.report import number

    console = _console()
    model, cur, drift = report["model"], report["current"], report["data_drift"]
    where = cur.get("path") or (
        f"prediction log {cur['window']['since'][:16]} .. {cur['window']['until'][:16]}"
    )
    console.print(
        f"monitor {model['name']} v{model['version']}: reference {report['reference']['rows']} "
        f"training rows vs {where} ({cur['rows']} rows)"
    )
    prep = cur.get("prep")
    if prep:
        from driftloop.prep.core import reason_lines

        console.print(
            f"prep of the raw file: {prep['rows_in']} rows in, {prep['rows_ok']} scored, "
            f"{prep['rows_quarantined']} quarantined, {prep['rows_duplicate']} duplicate "
            "(not scored)"
        )
        for line in reason_lines(prep["quarantine_reasons"]):
            console.print(line, markup=False)
    console.print(
        f"data drift: {drift['number_of_drifted_columns']} of {drift['number_of_columns']} "
        f"features drifted (weighted share "
        f"{number(drift['weighted_share_of_drifted_columns'], 2)}, dataset drift at "
        f"{drift['drift_share']:.2f}: {'YES' if drift['dataset_drift'] else 'no'})"
    )
    for c in drift["columns"]:
        if c["drift"]:
            console.print(
                f"  {c['column']}: {c['test']} {_g(c['value'])}; {c['reason']}", markup=False
            )
    for key in ("target_drift", "prediction_drift"):
        c = report.get(key)
        if c:
            verdict = "DRIFT" if c["drift"] else "no drift"
            console.print(
                f"{key.replace('_', ' ')} ({c['column']}): {verdict}, {c['test']} "
                f"{_g(c['value'])}; {c['reason']}",
                markup=False,
            )
    perf = report.get("performance")
    if perf:
        from driftloop.monitoring.performance import tolerance_text

        o = perf["overall"]
        decayed = sum(w["decayed"] for w in perf["windows"])
        undefined = sum(w["value"] is None for w in perf["windows"])
        tolerance = tolerance_text(perf["metric"], perf["tolerance"])
        console.print(
            f"performance: {perf['metric']} {number(o['value'])} [{number(o['low'])}, "
            f"{number(o['high'])}] on {perf['rows']} labelled rows vs holdout "
            f"{number(perf['holdout'])} (tolerance {tolerance}): "
            f"{'DEGRADED' if perf['degraded'] else 'ok'}; "
            f"{decayed} of {len(perf['windows'])} windows decayed"
            + (f", {undefined} undefined" if undefined else ""),
            markup=False,
        )
        found = ", ".join(f"{k} {v['count']}" for k, v in perf["detectors"]["detections"].items())
        console.print(f"  change detectors on the {perf['detectors']['stream']}: {found}")
    estimate = report.get("estimated_performance")
    if estimate and estimate["overall"]:
        values = ", ".join(f"{m} {number(estimate['overall'].get(m))}" for m in estimate["metrics"])
        console.print(f"estimated performance (no labels used; an estimate): {values}")
    paths = report.get("paths") or {}
    if paths:
        console.print(f"report: {paths['json']}, {paths['html']}")
    summary = report["summary"]
    if summary.get("headline"):
        console.print(summary["headline"])
    lead = {EXIT_DRIFT: "DRIFT: ", EXIT_COLUMN_DRIFT: "COLUMN DRIFT: "}.get(
        summary["exit_code"], "OK: "
    )
    console.print(lead + "; ".join(summary["messages"]), markup=False)


def _g(value: Any) -> str:
    return "undefined" if value is None else f"{value:.4g}"


@app.command()
def work(
    project: ProjectOpt = Path(),
    interval: Annotated[
        float, typer.Option(help="Seconds between passes when nothing is to do.")
    ] = 1.0,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once a pass finds nothing to do.")
    ] = False,
) -> None:
    """One of several workers sharing a project's state (state.url on PostgreSQL): passes
    that claim each unit of work, so workers on any machines split it, never repeat it."""
    import threading

    from driftloop.core.errors import DriftloopError
    from driftloop.orchestration.loop import work as work_loop

    stop = threading.Event()
    _on_stop_signals(stop.set)
    try:
        passes = work_loop(project, until_idle=until_idle, interval=interval, stop=stop)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    _console().print(f"worker stopped after {passes} pass(es)")


@app.command()
def watch(
    project: ProjectOpt = Path(),
    interval: Annotated[
        float, typer.Option(help="Seconds between passes when nothing lands.")
    ] = 1.0,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once a pass finds nothing to do.")
    ] = False,
) -> None:
    """Run the loop: every file landing in data/raw flows through every stage by itself."""
    from driftloop.core.errors import DriftloopError
    from driftloop.core.spec import load_spec
    from driftloop.orchestration.watch import Watcher, WatchState

    console = _console()
    try:
        spec = load_spec(project)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)

    live: Any = None
    if console.is_terminal:  # a status line that updates in place
        from rich.live import Live

        live = Live(console=console, refresh_per_second=4, transient=True)
    shown: list[str | None] = [None]

    def show(state: WatchState) -> None:
        if live is not None:
            from rich.text import Text

            parts = [f"watching {spec.name}", f"{state.passes} passes", state.notifications]
            if state.last_work:
                parts.append(f"last: {state.last_work}")
            if state.next_monitor:
                parts.append(f"next log check {state.next_monitor:%H:%M}")
            if state.unmatched:
                parts.append(f"{len(state.unmatched)} unmatched file(s)")
            line = Text(" | ".join(parts), style="dim")
            if state.last_error:
                line.append(f" | failing: {state.last_error}", style="red")
            live.update(line)
        elif state.last_error and state.last_error != shown[0]:
            console.print(f"[red]pass failed[/red]: {state.last_error} (the loop goes on)")
        shown[0] = state.last_error

    def on_pass(result: RunResult) -> None:
        print_run(result, project=project)  # outputs named where the project keeps them

    watcher = Watcher(project, interval=interval, on_pass=on_pass, on_status=show)

    _on_stop_signals(watcher.request_stop)
    landing = "files landing in data/raw"
    if spec.ingest.events is not None:  # S3 event notifications on an SQS queue
        landing = f"files its sources' notifications on {spec.ingest.events.queue} name"
    console.print(
        f"watching {project.resolve()} ({spec.name}): {landing} flow "
        "through prep, features, checks, training and the gate; Ctrl-C stops"
    )
    try:
        if live is not None:
            with live:
                watcher.run(until_idle=until_idle)
        else:
            watcher.run(until_idle=until_idle)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    state = watcher.state
    console.print(
        f"stopped after {state.passes} pass(es); last: {state.last_work or 'nothing new'}"
    )


@app.command()
def up(
    project: ProjectOpt = Path(),
    port: Annotated[int | None, typer.Option(help="Port (default: serving.port).")] = None,
) -> None:
    """Watch and serve together: the loop and /predict as two supervised processes."""
    from driftloop.core.errors import DriftloopError
    from driftloop.core.spec import load_spec
    from driftloop.orchestration.up import Supervisor

    console = _console()
    try:
        spec = load_spec(project)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    serve_args = ["--port", str(port)] if port is not None else []
    supervisor = Supervisor(project, serve_args=serve_args, say=console.print)

    _on_stop_signals(supervisor.stop.set)
    console.print(f"up: {spec.name} in {project.resolve()}: the loop and the server; Ctrl-C stops")
    supervisor.run()


@app.command()
def replay(
    project: ProjectOpt = Path(),
    data: Annotated[Path, typer.Option("--data", help="The historical data file.")] = Path(),
    batch_size: Annotated[int | None, typer.Option(help="Rows per batch.")] = None,
    by: Annotated[str | None, typer.Option(help="Batches by calendar: month, week or day.")] = None,
    initial: Annotated[
        int | None, typer.Option(help="Rows of the initial window (default: one batch).")
    ] = None,
    initial_periods: Annotated[
        int | None, typer.Option(help="With --by: periods in the initial window (default 1).")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="Policies to compare (static, every_batch, triggered); default all."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    keep_projects: Annotated[
        bool,
        typer.Option(
            "--keep-projects",
            help="Keep each policy's project (data, models, registry); by default only the "
            "report (replay.csv, summary.json, replay.html) is kept.",
        ),
    ] = False,
) -> None:
    """Stream a historical dataset through the loop in order; compare retrain policies."""
    from driftloop.core.errors import DriftloopError
    from driftloop.orchestration.replay import POLICIES
    from driftloop.orchestration.replay import replay as run_replay

    if by not in (None, "month", "week", "day"):
        _fail_text("--by must be month, week or day")
    console = _console()
    try:
        result = run_replay(
            project,
            data,
            out=out,
            batch_size=batch_size,
            by=by,  # type: ignore[arg-type]
            initial=initial,
            initial_periods=initial_periods,
            policies=tuple(policy or POLICIES),
            say=console.print,
            keep_projects=keep_projects,
        )
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    console.print(
        f"{'policy':<12} {'retrains':>8}  metrics (row-weighted, each batch scored before learning)"
    )
    for name, s in result.summary.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items() if v is not None)
        console.print(f"{name:<12} {s['retrains']:>8}  {shown}")
    console.print(
        f"report: {result.folder / 'replay.html'} (chart), {result.folder / 'replay.csv'}, "
        f"{result.folder / 'summary.json'}"
    )


@app.command()
def demo(
    project: ProjectOpt = Path("demo"),
    fresh: Annotated[bool, typer.Option(help="Delete the folder first.")] = True,
) -> None:
    """The lifecycle on built-in data: example project, a clean batch, then a drifted one."""
    from driftloop.core.errors import DriftloopError
    from driftloop.demo import run_demo

    try:
        ok = run_demo(project, fresh=fresh, show=print_run, console=_console())
    except DriftloopError as exc:
        _fail(exc, EXIT_STAGE_FAILED)
    if not ok:
        raise typer.Exit(EXIT_STAGE_FAILED)


export_app = typer.Typer(
    help="Write what another runner needs, from driftloop.yaml.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")


@export_app.command("aws")
def export_aws(
    project: ProjectOpt = Path(),
    out: Annotated[Path, typer.Option(help="Folder to write into.")] = Path("aws"),
    image: Annotated[str | None, typer.Option(help="The Image parameter's default.")] = None,
) -> None:
    """A Step Functions state machine and a CloudFormation template (see docs/deploy-aws.md)."""
    from driftloop.core.errors import DriftloopError
    from driftloop.core.spec import load_spec
    from driftloop.export import aws

    try:
        written = aws.write(load_spec(project), out, image)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    for path in written:
        _console().print(f"wrote {_name(path)}")


prefect_app = typer.Typer(
    help="The lifecycle under Prefect 3, fanned out on Dask (the prefect extra).",
    no_args_is_help=True,
)
app.add_typer(prefect_app, name="prefect")

PREFECT_MISSING = (
    "driftloop prefect needs the prefect extra, which is not installed here (no module "
    "{name!r}): pip install 'driftloop[prefect]' into an environment of its own (Prefect "
    "3.9 needs an older FastAPI than serving installs; make prefect-venv does it)"
)


def _prefect_module(name: str) -> Any:
    """A module of the Prefect side, or one line saying how to install the extra."""
    import importlib

    try:
        return importlib.import_module(f"driftloop.orchestration.{name}")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("prefect", "distributed", "dask"):
            raise
        _fail_text(PREFECT_MISSING.format(name=exc.name))


@prefect_app.command("run")
def prefect_run(project: ProjectOpt = Path()) -> None:
    """One pass as a Prefect flow run (on PREFECT_API_URL's server, or a temporary one)."""
    from driftloop.core.errors import DriftloopError

    flow_module = _prefect_module("prefect_flow")
    try:
        summary = flow_module.lifecycle(project=str(project))
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    except flow_module.StageFailedError as exc:
        _console().print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_STAGE_FAILED) from None
    for c in summary["calls"]:
        _console().print(f"{c['stage']} {c['batch_id']}: {c['outcome']} ({c['worker']})")
    if not summary["calls"]:
        _console().print("nothing to do: every output is up to date")


@prefect_app.command("serve")
def prefect_serve(project: ProjectOpt = Path()) -> None:
    """Create the project's deployments (the lifecycle, run by its events; the prediction-
    log monitor, on a schedule) on PREFECT_API_URL's server and run their flows here."""
    from driftloop.core.errors import DriftloopError

    deploy = _prefect_module("prefect_deploy")
    try:
        deploy.serve(project)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)


@prefect_app.command("deploy")
def prefect_deploy(
    project: ProjectOpt = Path(),
    pool: Annotated[
        str, typer.Option("--pool", help="the process work pool (created if missing)")
    ] = "driftloop",
) -> None:
    """Create the project's deployments (the lifecycle, run by its events; the prediction-
    log monitor, on a schedule) on a process work pool of PREFECT_API_URL's server, and
    return: 'prefect worker start --pool POOL' runs their flows, wherever driftloop is
    installed."""
    from driftloop.core.errors import DriftloopError

    deploy = _prefect_module("prefect_deploy")
    try:
        names = deploy.deploy(project, pool)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    for name in names:
        _console().print(f"deployment {name} on work pool {pool!r}")
    _console().print(f"start a worker for it: prefect worker start --pool {pool}")


@prefect_app.command("ingest")
def prefect_ingest(project: ProjectOpt = Path()) -> None:
    """Take complete new files into a batch and send driftloop.DataArrived to Prefect's
    event bus (what a file watcher or a queue consumer runs when a file lands)."""
    from driftloop.core.errors import DriftloopError

    deploy = _prefect_module("prefect_deploy")
    try:
        batch = deploy.ingest_and_relay(project)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    _console().print(f"batch {batch}: DataArrived sent" if batch else "no new complete file")


@export_app.command("airflow")
def export_airflow(
    project: ProjectOpt = Path(),
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to write the DAG to (default: PROJECT/airflow)."),
    ] = None,
) -> None:
    """An Airflow 3 DAG file: scheduled on the raw data's asset (with an SQS watcher when the
    spec has ingest.events), each task one 'driftloop stage' call."""
    from driftloop.core.errors import DriftloopError
    from driftloop.export.airflow import export

    try:
        path = export(project, out)
    except DriftloopError as exc:
        _fail(exc, EXIT_BAD_INPUT)
    _console().print(f"wrote {path}: put it in Airflow's dags folder (docs/deploy-airflow.md)")


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """Ctrl-C and SIGTERM stop a long-running command cleanly (between its steps)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _fail(exc: BaseException, code: int) -> NoReturn:
    from driftloop.core.errors import TransientError

    if isinstance(exc, TransientError):  # the disk, the state lock, S3 or the registry
        code = EXIT_RETRY_LATER  # not the project's fault: the same command will work later
    if _state["verbose"]:
        import traceback

        traceback.print_exception(exc)
    _fail_text(str(exc), code)


def _fail_text(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
