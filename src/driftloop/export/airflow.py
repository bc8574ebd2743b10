"""``driftloop export airflow``: the project's lifecycle as an Airflow 3 DAG file.

The DAG is readable generated Python (``airflow_dag.py.tmpl`` beside this module, filled
with the spec's values), not pickled configuration. It is scheduled on an ``Asset`` for the
raw data (a local folder as ``file://``, or an ``s3://`` prefix); where the spec has
``ingest.events`` the asset gets an ``AssetWatcher`` on that SQS queue (the Amazon
provider's ``SqsSensorTrigger``, an event trigger in Airflow 3), so an object landing in the
bucket starts a run. Prep and features are mapped over the batches the ingest task returns, the
checks of new batches over the plan's monitor calls, and a branch asks the retrain policy
(``driftloop plan``) whether to train.

Where the spec has ``monitoring.schedule_minutes`` (and a model), the same file holds a
second DAG, ``driftloop_<name>_prediction_log``, on that schedule: ``driftloop monitor`` on
the prediction log that serving wrote (under the outputs root: on S3 it is shared with the
servers wherever they run), and on drift or decay the retrain policy's branch to train and
promote, as the lifecycle DAG's.

Every task runs ``driftloop stage ... --json`` as a subprocess of the virtualenv driftloop is
installed in (``DRIFTLOOP_BIN``), so Airflow's environment never imports driftloop: Airflow
3 pins dependencies (FastAPI among them) older than driftloop's serving side needs, and the
two stay in separate virtualenvs. Exit code 5 (a failure of the machine) is retried by
Airflow; 1 and 2 (the data or the spec) fail the task at once (``AirflowFailException``).

:func:`render` is pure (the spec and the resolved values in, the file's text out);
:func:`export` reads the spec, resolves the queue's URL and writes the file.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from string import Template

from driftloop.core.errors import SpecError
from driftloop.core.spec import Spec

TEMPLATE = Path(__file__).with_name("airflow_dag.py.tmpl")
MONITOR_TEMPLATE = Path(__file__).with_name("airflow_monitor.py.tmpl")
GLOB_CHARS = re.compile(r"[*?\[{]")
RETRIES = 4  # a transient failure is tried this many more times, as the Prefect flow does
RETRY_DELAY_SECONDS = 10  # the first wait; doubled each retry, up to 5 minutes
AWS_CONN_ID = "aws_default"  # the Airflow connection the SQS trigger reads the queue with


@dataclass(frozen=True)
class RawAsset:
    """The raw data one or more sources land in: an Airflow asset's URI and name."""

    uri: str
    name: str


def dag_id(spec: Spec) -> str:
    """The DAG's id: ``driftloop_<project name>`` with anything but letters, digits, ``_``,
    ``-`` and ``.`` made ``_`` (Airflow's rule for ids)."""
    return "driftloop_" + re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name)


def monitor_dag_id(spec: Spec) -> str:
    """The prediction-log monitor's DAG id: the lifecycle's, then ``_prediction_log``."""
    return f"{dag_id(spec)}_prediction_log"


def monitor_dag(spec: Spec) -> str:
    """The scheduled prediction-log monitor's DAG (text to append), or "" when the spec has
    no schedule or no model."""
    minutes = spec.monitoring.schedule_minutes
    if minutes is None or not spec.model.enabled:
        return ""
    return Template(MONITOR_TEMPLATE.read_text(encoding="utf-8")).substitute(
        monitor_dag_id=repr(monitor_dag_id(spec)),
        minutes=repr(minutes),
        retries=RETRIES,
        retry_delay=RETRY_DELAY_SECONDS,
    )


def raw_root(path: str, project: Path) -> str:
    """The folder or prefix above a source's glob: ``s3://bucket/raw/orders`` for
    ``s3://bucket/raw/orders/*.csv``; a local glob's folder, absolute, as a ``file://`` URI."""
    head = GLOB_CHARS.split(path, maxsplit=1)[0]
    if head == path and "." not in PurePosixPath(path).name:  # no glob, no file: a folder
        folder = path.rstrip("/")
    else:
        folder = head.rsplit("/", 1)[0] if "/" in head else ""
    if "://" in path:
        return folder
    return (project.resolve() / folder).as_uri()


def raw_assets(spec: Spec, project: Path) -> list[RawAsset]:
    """One asset per distinct raw root, in the sources' order (one, for most projects)."""
    roots: list[str] = []
    for source in spec.sources:
        root = raw_root(source.path, project)
        if root not in roots:
            roots.append(root)
    suffix = [""] if len(roots) == 1 else [f"_{i}" for i in range(1, len(roots) + 1)]
    return [
        RawAsset(root, f"driftloop_{spec.name}_raw{s}")
        for root, s in zip(roots, suffix, strict=True)
    ]


def render(
    spec: Spec,
    *,
    project: Path,
    spec_file: str,
    driftloop: str,
    queue_url: str | None = None,
) -> str:
    """The DAG file's text. ``project``: the project folder as the Airflow workers see it;
    ``driftloop``: the driftloop command they run; ``queue_url``: the SQS queue's URL when the
    spec has ``ingest.events`` (the watcher's trigger needs a URL, not a name)."""
    assets = raw_assets(spec, project)
    if spec.ingest.events is not None and queue_url is None:
        raise SpecError(
            f"{spec_file}: ingest.events names the queue {spec.ingest.events.queue!r}; the "
            "DAG's watcher needs its URL: pass it (render(queue_url=...)) or let export look "
            "it up"
        )
    watchers = ""
    watcher_note = " (trigger a run with 'airflow dags trigger', or by an asset event)"
    first = "[]"
    if spec.ingest.events is not None and queue_url is not None:
        events = spec.ingest.events
        watchers = (
            "\n# S3 event notifications of the raw data arrive on this queue (ingest.events):\n"
            "# each message, taken off the queue by Airflow's triggerer, starts a run\n"
            "from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger\n\n"
            "QUEUE = SqsSensorTrigger(\n"
            f"    sqs_queue={queue_url!r},\n"
            f"    aws_conn_id={AWS_CONN_ID!r},\n"
            f"    wait_time_seconds={events.wait_seconds},  # SQS long polling\n"
            "    waiter_delay=1,  # seconds between two long polls\n"
            ")\n"
        )
        watcher_note = (
            f", watched on the SQS queue of ingest.events through the Airflow connection "
            f"{AWS_CONN_ID!r}"
        )
        first = '[AssetWatcher(name="raw_events", trigger=QUEUE)]'
    lines = []
    for i, asset in enumerate(assets):
        watch = first if i == 0 else "[]"
        lines.append(f"Asset(uri={asset.uri!r}, name={asset.name!r}, watchers={watch})")
    if len(lines) == 1:
        asset_expr, schedule = lines[0], "[RAW]"
    else:
        asset_expr = "[\n    " + ",\n    ".join(lines) + ",\n]"
        schedule = " | ".join(f"RAW[{i}]" for i in range(len(lines)))  # any of them
    text = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=spec.name,
        spec_file=spec_file,
        watcher_note=watcher_note,
        project=repr(str(project)),
        driftloop=repr(driftloop),
        watchers=watchers,
        assets=asset_expr,
        dag_id=repr(dag_id(spec)),
        schedule=schedule,
        retries=RETRIES,
        retry_delay=RETRY_DELAY_SECONDS,
        monitor_note=monitor_note(spec),
        monitor_dag=monitor_dag(spec),
    )
    return text


def monitor_note(spec: Spec) -> str:
    if not monitor_dag(spec):
        return ""
    return (
        f"\nThe second DAG, {monitor_dag_id(spec)}, monitors the prediction log every "
        f"{spec.monitoring.schedule_minutes:g}\nminute(s) (monitoring.schedule_minutes) and "
        "retrains on drift or decay as the policy says."
    )


def driftloop_command() -> str:
    """This virtualenv's driftloop command (what the DAG's tasks run), else the one on PATH."""
    here = Path(sys.executable).parent / "driftloop"
    if here.is_file():
        return str(here)
    return shutil.which("driftloop") or "driftloop"


def resolve_queue(spec: Spec) -> str | None:
    """The URL of the ingest.events queue (``sqs://NAME`` is looked up in AWS, as the
    built-in consumer does); None without events."""
    if spec.ingest.events is None:
        return None
    queue = spec.ingest.events.queue
    if not queue.startswith("sqs://"):
        return queue
    from driftloop.core.sqs import EventConsumer

    consumer = EventConsumer(
        spec.ingest.events,
        matches=lambda url: False,
        on_hint=lambda events: None,
        region=spec.storage.region,
        profile=spec.storage.profile,
    )
    return consumer.url()  # a missing queue or refused credentials: an error naming the fix


def export(project: Path, out: Path | None = None) -> Path:
    """Write ``driftloop_<name>.py`` into ``out`` (default: the project's ``airflow/``
    folder) and return its path."""
    from driftloop.core.spec import SPEC_FILENAME, load_spec

    spec = load_spec(project)
    spec_file = SPEC_FILENAME
    text = render(
        spec,
        project=project.resolve(),
        spec_file=spec_file,
        driftloop=driftloop_command(),
        queue_url=resolve_queue(spec),
    )
    folder = out if out is not None else project / "airflow"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dag_id(spec)}.py"
    path.write_text(text, encoding="utf-8")
    return path
