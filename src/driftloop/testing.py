"""What tests of driftloop and of projects built on it can use, shipped with the package.

``InMemoryRegistry`` is a model registry in this process's memory: the whole lifecycle
(train, the promotion gate, promote, rollback, serving's champion lookup in process) runs
against it without MLflow, in a fraction of the time. A project uses it by configuration,
as it would any registry (a pass, ``driftloop.run_stage``, the CLI in process)::

    registry = memory_store("shop")          # a fresh store with a unique memory:// URI
    spec_text += f"model: {{tracking_uri: '{registry.uri}'}}\\n"

It behaves as the MLflow registry does: the same contract test runs over both. Set
``registry.down = True`` to make it fail as a registry that does not answer.
"""

from __future__ import annotations

from driftloop.models.memory import InMemoryRegistry, forget, memory_registry

__all__ = ["InMemoryRegistry", "forget", "memory_registry", "memory_store"]


def memory_store(model: str) -> InMemoryRegistry:
    """A new, empty in-memory registry of ``model`` that ``open_registry`` finds by its URI."""
    fresh = InMemoryRegistry(model)
    return memory_registry(fresh.uri, model)
