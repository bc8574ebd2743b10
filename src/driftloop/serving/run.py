"""``driftloop serve``: uvicorn with the app, its worker processes and their thread budgets.

Each worker is a process with its own copy of the model (Python runs one thread at a time,
so processes are how a server uses several cores). Inside a worker, OpenMP (scikit-learn's
gradient boosting), BLAS and Polars get ``serving.threads_per_worker`` threads: on a small
machine, workers x threads above the core count makes every request slower, and OpenMP's
default (one thread per core in every worker) made gradient boosting stall for seconds.
These variables are set before any worker imports those libraries.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from driftloop.core.procs import pid_alive
from driftloop.core.spec import load_spec

PROJECT_ENV = "DRIFTLOOP_SERVE_PROJECT"
LOG_LEVEL_ENV = "DRIFTLOOP_SERVE_LOG_LEVEL"
METRICS_PREFIX = "driftloop-metrics-"
# the app factory uvicorn's workers call; ``driftloop serve`` names the one that adds the
# dashboard (driftloop.ui, a layer above this one)
APP_FACTORY = "driftloop.serving.run:app_from_environment"
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "POLARS_MAX_THREADS",
)


def serve(
    project: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    app_factory: str = APP_FACTORY,
) -> None:
    """Serve the project's champion until interrupted (Ctrl-C or SIGTERM: a clean stop).

    ``app_factory``: ``module:function`` of the app each worker builds (default: the
    serving app alone)."""
    import uvicorn

    from driftloop.serving.auth import check_binding, load_tokens
    from driftloop.serving.limits import uvicorn_settings

    project = project.resolve()
    spec = load_spec(project)
    settings = spec.serving
    # Before any worker starts: a bad token file or an open API on a public address stops
    # here with one clear message, not in every worker.
    check_binding(host or settings.host, load_tokens())
    prepare_environment(project, settings.threads_per_worker)
    uvicorn.run(
        app_factory,
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers or settings.workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        **uvicorn_settings(settings.limits),  # header/body bounds, connections per worker
    )


def prepare_environment(project: Path, threads: int) -> None:
    """Thread budgets, the project for the workers, and a fresh multiprocess metrics folder."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    os.environ[PROJECT_ENV] = str(project)
    os.environ[LOG_LEVEL_ENV] = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_folder())


def metrics_folder() -> Path:
    """A fresh folder for the workers' metric files, in memory where the OS offers it.

    Every counter update writes to a memory-mapped file there: on tmpfs that never waits on
    a disk. Folders left by servers that are gone (killed, or stopped by a signal, which
    skips cleanup) are removed first.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for old in base.glob(f"{METRICS_PREFIX}*"):
        pid = old.name.removeprefix(METRICS_PREFIX)
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{METRICS_PREFIX}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def app_from_environment() -> Any:
    """The app factory uvicorn's workers call (the project comes from the environment)."""
    from driftloop.core.redact import redact_standard_streams
    from driftloop.serving.app import create_app

    redact_standard_streams()  # the worker's logs, before logging holds the stream
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "WARNING"),
        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: %(message)s",
    )
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    return create_app(Path(os.environ[PROJECT_ENV]))
