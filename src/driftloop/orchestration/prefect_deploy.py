"""The deployments ``driftloop prefect serve`` and ``driftloop prefect deploy`` create, and
the small flows beside the lifecycle (the ``prefect`` extra).

``serve`` creates them and runs their flow runs in its own process; ``deploy`` creates them
on a work pool of type ``process`` (made if it does not exist), and returns: a
``prefect worker start --pool NAME`` on any machine with driftloop and the extra installed
runs each flow run in a subprocess. Those deployments name their flows by module path
(``driftloop.orchestration.prefect_flow.lifecycle``), so the worker needs no copy of any
source: the installed package is the code, the project folder (or S3 and PostgreSQL) the
data and state.

- ``driftloop-lifecycle/<project>``: the lifecycle flow, run by events: a file landing
  (``driftloop.DataArrived``, sent by ``driftloop prefect ingest`` or by a pass that
  ingested) and a drift or decay found (``driftloop.DriftDetected``,
  ``driftloop.PerformanceDegraded``): the planner then decides what the pass must do
  (retraining when the retrain policy says so). The triggering event's name and id become the
  run's ``trigger_event`` and ``trigger_id`` parameters. One run at a time per project.
- ``driftloop-monitor/<project>``: ``driftloop monitor`` over the prediction log, every
  ``monitoring.schedule_minutes``; what it finds goes to the event bus like the rest.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from driftloop.core.errors import DriftloopError
from driftloop.core.layout import Layout
from driftloop.core.spec import Spec, load_spec
from driftloop.core.state import StateDB
from driftloop.orchestration import engine, prefect_events
from driftloop.orchestration.prefect_flow import lifecycle

MONITOR_FLOW = "driftloop-monitor"
TRIGGERS = ("DataArrived", "DriftDetected", "PerformanceDegraded")


@flow(name=MONITOR_FLOW)
def monitor_predictions(project: str) -> dict[str, Any]:
    """``driftloop monitor`` on the prediction log (its drift tests fanned out per column on
    the cluster with ``engine: dask``); its findings go to the event bus, where a drift or
    decay triggers the lifecycle, whose retrain policy acts on it (the planner's rule)."""
    from driftloop.monitoring.run import monitor

    path = Path(project)
    spec = load_spec(path)
    try:
        with engine.session(spec.engine):  # engine: dask: the drift tests per column on it
            result = monitor(path)
        found: dict[str, Any] = {"exit_code": result.exit_code}
    except DriftloopError as exc:  # nothing logged yet, no champion yet: said, not failed
        found = {"exit_code": None, "skipped": str(exc)}
    with StateDB(Layout(path).state_db, url=spec.state.url) as db:
        prefect_events.relay(db, spec.name)
    return found


def lifecycle_trigger(spec: Spec, project: str) -> DeploymentEventTrigger:
    """A project's events that start a lifecycle run, with the event in its parameters."""
    return DeploymentEventTrigger(
        name=f"driftloop {spec.name}: data or drift",
        expect={f"{prefect_events.PREFIX}{t}" for t in TRIGGERS},
        match={"prefect.resource.id": prefect_events.resource_id(spec.name)},
        parameters={
            "project": project,
            "trigger_event": "{{ event.event }}",
            "trigger_id": "{{ event.id | string }}",
        },
    )


def deployments(project: Path, *, by_module: bool = False) -> list[Any]:
    """The project's deployments (to serve with ``prefect.serve``; ``by_module``: their
    flows named by module path, for a work pool's worker)."""
    from prefect.types.entrypoint import EntrypointType

    path = str(project.resolve())
    spec = load_spec(project)
    entry = EntrypointType.MODULE_PATH if by_module else EntrypointType.FILE_PATH
    made = [
        lifecycle.to_deployment(
            name=spec.name,
            parameters={"project": path},
            triggers=[lifecycle_trigger(spec, path)],
            concurrency_limit=1,
            description=f"driftloop's lifecycle over {spec.name}, run by its events",
            entrypoint_type=entry,
        )
    ]
    minutes = spec.monitoring.schedule_minutes
    if spec.model.enabled and minutes is not None:
        made.append(
            monitor_predictions.to_deployment(
                name=spec.name,
                parameters={"project": path},
                interval=timedelta(minutes=minutes),
                concurrency_limit=1,
                description=f"the prediction log of {spec.name}, every {minutes:g} min",
                entrypoint_type=entry,
            )
        )
    return made


def deploy(project: Path, pool: str) -> list[str]:
    """Create the project's deployments on the process work pool ``pool`` (made if missing,
    with the process worker's own job template); returns ``flow/deployment`` names. The
    flow runs wait for a ``prefect worker start --pool POOL``."""
    from prefect import deploy as prefect_deploy
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    made = deployments(project, by_module=True)
    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )
        else:
            if found.type != "process":
                raise DriftloopError(
                    f"work pool {pool!r} is of type {found.type!r}; driftloop prefect deploy "
                    "needs a 'process' pool (its worker runs the installed driftloop): pick "
                    "another name, and it is created"
                )
    prefect_deploy(
        *made,
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return [f"{d.flow_name}/{d.name}" for d in made]


def serve(project: Path) -> None:
    """Create the deployments on the Prefect API and run their flow runs here (blocks)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(project))


def ingest_and_relay(project: Path) -> str | None:
    """``driftloop prefect ingest``: take complete new files into a batch and send its
    ``DataArrived`` (and anything else not sent yet) to the bus; returns the batch id."""
    from driftloop.core.stage import Context, StageCall
    from driftloop.orchestration.runner import claimed, run_call

    spec = load_spec(project)
    layout = Layout(project)
    with StateDB(layout.state_db, url=spec.state.url) as db:
        batch = None
        with claimed(db, "ingest") as holder:
            if holder is None:
                report = run_call(Context(spec, layout, db), StageCall("ingest"))
                batch = report.manifest.get("batch_id")
        prefect_events.relay(db, spec.name)
    prefect_events.flush()
    return batch
