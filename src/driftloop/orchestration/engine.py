"""Where the calls that fan out run: in this process, or on a Dask cluster (``engine:``).

``engine: dask`` connects to the scheduler at ``engine.address``, or without one starts a
``LocalCluster`` of ``engine.workers`` processes on this machine for the session (a flow
run), when its first call needs it. Each worker is held to ``threads_per_worker`` threads,
and Polars and OpenMP inside it to as many (``POLARS_MAX_THREADS``, ``OMP_NUM_THREADS`` in
the worker's environment, set before it imports Polars): two workers that each took every
core would only fight. Workers started by hand (``dask worker``) need the same variables;
docs/architecture.md shows the commands. Dask is imported only when a cluster starts.

Under Prefect the flow hands the session's cluster to ``prefect_dask.DaskTaskRunner``
(:func:`scheduler_address`), so the per-batch calls are Prefect task runs on the Dask
workers; the stages fan their own pieces out on it (:class:`ClusterExecutor`, installed as
:func:`driftloop.core.executor.current` for the session); anything else goes to it through
:func:`run` (``Client.submit``). A worker process that dies mid-call is replaced by the
nanny and the call is run again by the scheduler (Dask's ``allowed-failures``); the runner's
run keys make the second run finish what the first started, never do it twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any, TypeVar

from driftloop.core import executor
from driftloop.core.spec import EngineSpec

T = TypeVar("T")

_lock = threading.Lock()


def worker_env(threads: int) -> dict[str, str]:
    """The environment each worker starts with: its threads, for Polars and OpenMP too."""
    n = str(threads)
    return {
        "POLARS_MAX_THREADS": n,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
    }


_session: _Session | None = None  # the running session (one flow run in this process)


class _Session:
    """A session's cluster, started on the first call that needs it (a pass with nothing to
    fan out starts none), closed when the session ends."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.client: Any = None
        self.cluster: Any = None

    def connect(self) -> Any:
        if self.client is None:
            from distributed import Client, LocalCluster

            spec = self.spec
            if spec.address is None:
                self.cluster = LocalCluster(
                    n_workers=spec.workers,
                    threads_per_worker=spec.threads_per_worker,
                    processes=True,
                    dashboard_address=":0",  # a free port: several clusters on one machine
                    silence_logs=logging.ERROR,  # its INFO lines would drown the flow's
                    host="127.0.0.1",
                    env=worker_env(spec.threads_per_worker),
                )
                self.client = Client(self.cluster)
            else:
                self.client = Client(spec.address)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class ClusterExecutor(Executor):
    """The session's cluster as a ``concurrent.futures`` executor (Dask's own), connected
    on the first submit: what a stage fans out on (:mod:`driftloop.core.executor`)."""

    def __init__(self, found: _Session) -> None:
        self._session = found
        self._executor: Any = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with _lock:
            if self._executor is None:
                self._executor = self._session.connect().get_executor(pure=False)
        future: Future[T] = self._executor.submit(fn, *args, **kwargs)
        return future


@contextmanager
def session(spec: EngineSpec) -> Iterator[None]:
    """The block's engine: with ``dask``, the calls :func:`run` is given go to a cluster,
    and the stages fan out on it (:func:`driftloop.core.executor.current`)."""
    global _session
    if spec.name != "dask":
        yield
        return
    found = _Session(spec)
    with _lock:
        _session = found
    try:
        with executor.installed(ClusterExecutor(found)):
            yield
    finally:
        with _lock:
            _session = None
        found.close()


def scheduler_address() -> str:
    """The session's scheduler (its LocalCluster started now if it is not yet)."""
    with _lock:
        if _session is None:
            raise RuntimeError("no Dask session is open (engine.session(spec) first)")
        client = _session.connect()
    return str(client.scheduler.address)


def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the session's cluster (and wait for it), or here without one."""
    with _lock:  # one thread starts the cluster; the others wait for it
        client = _session.connect() if _session is not None else None
    if client is None:
        return fn(*args)
    future = client.submit(fn, *args, pure=False)
    result: T = future.result()
    return result


def worker_name() -> str | None:
    """The Dask worker this code runs on (its address), or None outside a worker."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return str(get_worker().address)
    except ValueError:  # not in a worker
        return None
