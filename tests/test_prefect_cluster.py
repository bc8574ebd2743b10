"""The multi-machine deployment on one machine (issue 14, section 2): a Dask scheduler and two
workers started from the CLI that share no folder with the flow.

As close to "other machines" as one machine allows: ``dask scheduler`` and two ``dask
worker`` processes, each in a process group of its own, on free ports, each worker held to
one thread with its own empty working directory, ``HOME`` and ``TMPDIR``, and each in a
mount namespace of its own (``unshare --mount``) where the folder holding the flow's
project and the flow's ``HOME`` is replaced, read-only, by a worker copy of the project's
code only (``driftloop.yaml`` and the feature module at the same path, as a container image
or a deployment tool would put them). So a worker cannot see, nor write, anything the flow's
machine keeps: the raw data and the outputs are on S3 (the moto server), the state on
PostgreSQL, the models in the ``mlflow server`` fixture, Prefect's task results on S3.

``driftloop prefect run`` runs one pass with ``engine: {name: dask, address: tcp://...}``:
two landed batches are prepped and their features built on the two workers, the first model
is trained and promoted in the flow's process. Then nothing is left under the workers'
folders but what Dask itself writes (its scratch space), and Prefect's results are on S3.

Where ``unshare`` cannot make a mount namespace (a container without the capability) the
test skips with the reason, or fails with ``DRIFTLOOP_REQUIRE_PREFECT=1`` (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from driftloop.core.layout import Layout, is_complete
from driftloop.core.state import StateDB

from .fixtures.mlflow_server import MlflowServer
from .fixtures.moto import S3Env
from .fixtures.postgres import PASSWORD
from .fixtures.prefect_server import PrefectServer
from .fixtures.procs import stop_group
from .helpers import write_spec
from .test_prefect import land

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

CLI = [sys.executable, "-m", "driftloop.cli"]
GUARD = 300.0  # seconds: a hang guard for a process to come up, never a timing assertion
DASK_WRITES = "dask-scratch-space"  # what Dask itself writes under a worker's TMPDIR

SPEC = """
name: {name}
task: classification
target: y
time_column: t
sources: [{{name: s, path: "s3://{bucket}/raw/s/*.csv"}}]
contract:
  columns:
    t: {{dtype: datetime, format: "%Y-%m-%d %H:%M:%S", nullable: false}}
    x1: {{dtype: float}}
    x2: {{dtype: float}}
    c: {{dtype: str}}
    y: {{dtype: str, allowed: ["no", "yes"], nullable: false}}
ingest: {{settle_seconds: 0}}
features: {{function: "feats:extra"}}
retrain: {{every_batches: 0}}
model: {{tracking_uri: "{tracking}", refit_on_all: false}}
engine: {{name: dask, address: "{scheduler}"}}
state: {{url: "{state}"}}
outputs: s3://{bucket}/out
"""

FEATS = """
import polars as pl


def extra(frame):
    return {"x1_x2": pl.col("x1") * pl.col("x2")}
"""


# A call made again, with its output committed: first as a task run on the cluster (its run
# key is Prefect's cache key; no record under it yet, so the task runs, driftloop answers
# "cached", and the worker writes the record), then as a task run in this other process,
# whose local storage path is not the worker's: a hit only if the record is where both see.
AGAIN = """
import sys
from prefect import flow, unmapped
from prefect_dask.task_runners import DaskTaskRunner
from pathlib import Path
from driftloop.core.spec import load_spec
from driftloop.orchestration.prefect_flow import stage_task
from driftloop.orchestration.prefect_results import stored

project, address, batch = sys.argv[1:4]
task = stored(stage_task, load_spec(Path(project)))
call = {"stage": "prep", "batch_id": batch}


@flow
def again():
    with DaskTaskRunner(address=address) as runner:
        params = {"project": unmapped(project), "call": [call], "label": ["on a worker"]}
        (future,) = runner.map(task, params)
        future.wait()
        print("worker:", future.state.name, future.result()["worker"])
    print("here:", task(project, call, "here", return_state=True).name)


again()
"""


def _unshare() -> list[str]:
    """The ``unshare`` command that gives a process a mount namespace of its own (as root,
    or as an unprivileged user mapped to root in a user namespace), or skip/fail."""
    found = shutil.which("unshare")
    tries = (
        [["--mount", "--propagation", "private"]]
        if os.geteuid() == 0
        else [["--user", "--map-root-user", "--mount", "--propagation", "private"]]
    )
    why = "unshare (util-linux) is not installed"
    if found is not None:
        for flags in tries:
            probe = subprocess.run(
                [found, *flags, "true"], capture_output=True, text=True, check=False
            )
            if probe.returncode == 0:
                return [found, *flags]
            why = f"unshare {' '.join(flags)} failed here: {probe.stderr.strip()}"
    if os.environ.get("DRIFTLOOP_REQUIRE_PREFECT") == "1":
        pytest.fail(f"{why}; the cluster test needs a mount namespace per Dask worker")
    pytest.skip(f"{why}: the cluster test needs a mount namespace per Dask worker")


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + GUARD
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never appeared:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@dataclass
class Worker:
    root: Path  # everything of this worker: its cwd, HOME, TMPDIR and its view of the flow's
    address: str = ""

    @property
    def folders(self) -> dict[str, Path]:
        return {n: self.root / n for n in ("cwd", "home", "tmp", "view")}


@dataclass
class Cluster:
    scheduler: str
    workers: list[Worker]


def _written(worker: Worker, before: dict[str, bytes]) -> list[str]:
    """Every file under the worker's folders that Dask did not write, or that changed."""
    found = []
    for path in sorted(worker.root.rglob("*")):
        rel = path.relative_to(worker.root).as_posix()
        if DASK_WRITES in path.parts or path.is_dir() or rel == "worker.log":
            continue
        if before.get(rel) != path.read_bytes():
            found.append(rel)
    return found


@pytest.fixture
def cluster(tmp_path: Path, s3_env: S3Env) -> Iterator[Cluster]:
    """``dask scheduler`` and two ``dask worker`` processes (one thread each), every worker
    in its own mount namespace where ``tmp_path/flow`` (the flow's project and HOME) is its
    own read-only copy of the project's code."""
    unshare = _unshare()
    flow = tmp_path / "flow"
    procs: list[subprocess.Popen[bytes]] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    base.update(s3_env.server.env())
    base.update({"PGPASSWORD": PASSWORD, "POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"})
    try:
        sched = tmp_path / "scheduler"
        sched.mkdir()
        file = sched / "scheduler.json"
        start = [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0"]
        start += ["--dashboard-address", ":0", "--scheduler-file", str(file)]
        with (sched / "scheduler.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    start,
                    cwd=sched,
                    env={**base, "HOME": str(sched), "TMPDIR": str(sched)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_for_file(file, procs[0], sched / "scheduler.log")
        address = json.loads(file.read_text())["address"]
        workers = [Worker(tmp_path / f"worker{i}") for i in (1, 2)]
        for worker in workers:
            for folder in worker.folders.values():
                folder.mkdir(parents=True)
            view = worker.folders["view"] / "proj"  # the flow's tmp_path/flow/proj, as code
            view.mkdir()
            (view / "feats.py").write_text(FEATS)
            flow.mkdir(exist_ok=True)
            # in the namespace: the flow's folder is the worker's view, read-only; then dask
            script = (
                'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && cd "$3" && '
                'shift 3 && exec "$@"'
            )
            cmd = [*unshare, "sh", "-c", script, "sh", str(worker.folders["view"]), str(flow)]
            cmd += [str(worker.folders["cwd"]), sys.executable, "-m", "dask", "worker", address]
            cmd += ["--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"]
            env = {
                **base,
                "HOME": str(worker.folders["home"]),
                "TMPDIR": str(worker.folders["tmp"]),
            }
            with (worker.root / "worker.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        from distributed import Client

        with Client(address, timeout=GUARD) as client:
            client.wait_for_workers(2, timeout=GUARD)
            found = client.scheduler_info()["workers"]
            for worker, (addr, info) in zip(workers, sorted(found.items()), strict=True):
                worker.address = addr
                del info
        yield Cluster(address, workers)
    finally:
        for proc in reversed(procs):
            stop_group(proc)


def test_a_pass_runs_on_dask_workers_that_share_no_folder(
    prefect_server: PrefectServer,
    mlflow_server: MlflowServer,
    postgres_url: str,
    s3_env: S3Env,
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    url = sa.make_url(postgres_url)
    state = f"postgresql://postgres@127.0.0.1:{url.port}/{url.database}"  # no password
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    spec = SPEC.format(
        name=name,
        bucket=s3_env.bucket,
        tracking=mlflow_server.uri,
        scheduler=cluster.scheduler,
        state=state,
    )
    project = tmp_path / "flow" / "proj"
    write_spec(project, spec)
    (project / "feats.py").write_text(FEATS)
    before = {}
    for worker in cluster.workers:  # the same code, at the same path, on every "machine"
        shutil.copy(project / "driftloop.yaml", worker.folders["view"] / "proj")
        before[worker.root] = {
            p.relative_to(worker.root).as_posix(): p.read_bytes()
            for p in worker.root.rglob("*")
            if p.is_file() and p.name != "worker.log"
        }
    home = tmp_path / "flow" / "home"
    home.mkdir()
    env = {
        **os.environ,
        **prefect_server.env,
        "HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / ".prefect" / "storage"),
        "PGPASSWORD": PASSWORD,
        "OMP_NUM_THREADS": "1",
    }

    def cli(*args: str) -> str:
        out = subprocess.run(
            [*CLI, *args, "-p", str(project)],
            capture_output=True,
            text=True,
            env=env,
            timeout=GUARD * 2,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    scratch = tmp_path / "landing"
    for i, file in enumerate(("a.csv", "b.csv")):  # two batches: one ingested now, one by the flow
        land(scratch, file, rows=400, seed=i, start_day=1 + 7 * i, drift=False)
        s3_env.put(f"raw/s/{file}", (scratch / "data" / "raw" / "s" / file).read_bytes())
        if i == 0:
            cli("stage", "ingest")
    out = cli("prefect", "run")
    print(out)  # with -s: the run as the README shows it

    ran = {}
    for line in out.splitlines():
        if ": ran (" in line:
            what, where = line.split(": ran (")
            ran[tuple(what.split(" "))] = where.rstrip(")")
    batches = sorted({b for (stage, b) in ran if stage == "prep"})
    assert len(batches) == 2, out
    on_workers = {ran[(stage, b)] for stage in ("prep", "features") for b in batches}
    assert on_workers == {w.address for w in cluster.workers}, out  # both, and only them
    assert not ran[("train", batches[-1])].startswith("tcp://"), out  # the flow's process
    assert ("promote", batches[-1]) in ran, out

    layout = Layout(project)
    assert layout.on_object_store
    for batch in batches:
        assert is_complete(layout.processed / batch) and is_complete(layout.features / batch)
    with StateDB(layout.state_db, url=postgres_url) as db:
        promoted = [e for e in db.events(limit=10_000) if e["type"] == "ModelPromoted"]
    assert [str(e["version"]) for e in promoted] == ["1"]

    # Prefect's task results (its cache records) are on S3 beside the outputs, shared: a
    # record a worker wrote is a cache hit in another process, with a local path of its own
    env["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path / "elsewhere")
    again = subprocess.run(
        [sys.executable, "-c", AGAIN, str(project), cluster.scheduler, batches[0]],
        capture_output=True,
        text=True,
        env=env,
        timeout=GUARD,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    worker, here = again.stdout.strip().splitlines()[-2:]
    assert worker.split()[:2] == ["worker:", "Completed"], again.stdout + again.stderr
    assert worker.split()[2] in {w.address for w in cluster.workers}, again.stdout
    assert here == "here: Cached", again.stdout + again.stderr
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="out/prefect-results/")
    assert listed.get("KeyCount", 0) == 1, listed  # the record, where every process sees it
    for local in (home / ".prefect" / "storage", tmp_path / "elsewhere"):
        assert not local.exists() or not any(local.iterdir()), sorted(local.rglob("*"))

    # nothing under a worker's folders but what Dask itself writes
    for worker in cluster.workers:
        assert _written(worker, before[worker.root]) == [], worker.root
        assert (worker.folders["tmp"] / DASK_WRITES).is_dir()  # its own TMPDIR, not ours


def test_stage_results_go_beside_s3_outputs_and_stay_local_otherwise(tmp_path: Path) -> None:
    from prefect.filesystems import RemoteFileSystem

    from driftloop.core.spec import load_spec
    from driftloop.orchestration.prefect_flow import stage_task
    from driftloop.orchestration.prefect_results import block_name, result_storage, stored

    base = SPEC.split("outputs:")[0].format(
        name="r", bucket="b", tracking="http://127.0.0.1:1", scheduler="tcp://127.0.0.1:1",
        state="postgresql://postgres@127.0.0.1:1/db",
    )  # fmt: skip
    write_spec(tmp_path / "local", base)
    assert result_storage(load_spec(tmp_path / "local")) is None
    assert stored(stage_task, load_spec(tmp_path / "local")) is stage_task

    extra = (
        "outputs: s3://bkt/team/proj/\n"
        "storage: {endpoint_url: 'http://minio:9000', region: eu-west-1}\n"
    )
    write_spec(tmp_path / "s3", base + extra)
    storage = result_storage(load_spec(tmp_path / "s3"))
    assert isinstance(storage, RemoteFileSystem)
    assert storage.basepath == "s3://bkt/team/proj/prefect-results"
    # where S3 is, never who: credentials come from the environment of each process
    assert storage.settings == {
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}
    }
    assert block_name(load_spec(tmp_path / "s3")) == "driftloop-results-r"
