"""Serving: FastAPI ``/predict`` from the registry's champion, with hot swap and a prediction log.

Modules: ``records`` (the contract at the request edge), ``model`` (a loaded version and
its scoring path), ``champion`` (following the alias, the local cache, the swap),
``batcher`` (micro-batching), ``logbook`` (prediction and feedback logs), ``metrics``
(Prometheus), ``server`` (one worker's parts, started and stopped with the app),
``handlers`` and ``schemas`` (/predict and /feedback), ``app`` (the routes), ``run`` (uvicorn
and worker settings), ``client`` (a background server and traffic, for the demo and tests).
"""

from __future__ import annotations

from typing import Any


def create_app(project: Any) -> Any:
    """The FastAPI app for a project folder (see :mod:`driftloop.serving.app`)."""
    from driftloop.serving.app import create_app as _create

    return _create(project)


def serve(project: Any, **options: Any) -> None:
    """Serve a project's champion (see :func:`driftloop.serving.run.serve`)."""
    from driftloop.serving.run import serve as _serve

    _serve(project, **options)


__all__ = ["create_app", "serve"]
