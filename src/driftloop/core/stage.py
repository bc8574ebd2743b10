"""The one shape every stage has.

A stage is called as a :class:`StageCall` (a stage name, the batch it works on, and for the
check against the champion the version it checks). Given the project (:class:`Context`),
the stage says what the call would do as :class:`Work`: its run key (a hash of the stage,
its version, the spec sections it reads and its inputs' fingerprints), the folder its
committed output lands in, and a function that does it and returns the output's manifest.
Computing the work reads manifests and the ledger, never data, so a runner can tell a cache
hit from work to do cheaply. A stage may instead answer with a :class:`Skip` (nothing it can
do, and why).

The runner (:mod:`driftloop.orchestration.runner`) owns everything around the work: cache
hits, claims, retries with backoff, the stage-run record and the events. Every runner (the
built-in loop, ``driftloop stage``, an orchestrator's task) goes through it, so any call can
be retried anywhere and the result is the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from driftloop.core.layout import Layout, Output
from driftloop.core.spec import Spec
from driftloop.core.state import CurrentKeys, StateDB

Manifest = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class StageCall:
    """One call a pass makes. ``batch_id`` for the per-batch stages; ``champion``: the
    version a batch is checked against (the monitor stage); ``reason``: why the planner asks
    for a training (recorded as ``RetrainRequested``)."""

    stage: str
    batch_id: str | None = None
    champion: str | None = None
    reason: str | None = None

    @property
    def unit(self) -> str:
        """What a worker claims: a stage for one batch, or a project-wide stage."""
        return self.stage if self.batch_id is None else f"{self.stage}:{self.batch_id}"

    def __str__(self) -> str:
        parts = [self.stage]
        if self.batch_id is not None:
            parts.append(f"--batch {self.batch_id}")
        if self.champion is not None:
            parts.append(f"--champion {self.champion}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Context:
    """The project a call runs in. ``now`` arrives as an argument (tests, replay).

    What a pass reads once for all its calls (the sources' placement, the ledger by batch,
    the keys of the published outputs) is kept in ``memo`` (:meth:`once`); the runner
    writes the keys a call publishes through to :meth:`current`.
    """

    spec: Spec
    layout: Layout
    db: StateDB
    now: datetime | None = None
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def current(self) -> CurrentKeys:
        """The published keys of the outputs, read once per pass and as asked."""
        return self.once("current", lambda: CurrentKeys(self.db))

    def once(self, name: str, compute: Callable[[], T]) -> T:
        if name not in self.memo:
            self.memo[name] = compute()
        found: T = self.memo[name]
        return found

    def forget(self, name: str) -> None:
        self.memo.pop(name, None)


@dataclass(frozen=True)
class Work:
    """What a call would do: its key, its committed output, and the work itself (given the
    start time, it writes the output and returns the output's manifest)."""

    key: str
    output: Output
    run: Callable[[float], Manifest]
    batch_id: str = "-"  # the batch recorded with the stage run ('-' for project-wide stages)


@dataclass(frozen=True)
class Skip:
    """A call with nothing to do, and why (reported as skipped, with this reason)."""

    why: str
    batch_id: str = "-"


def run_key(stage: str, version: str, spec_hash: str, inputs: list[str]) -> str:
    text = json.dumps([stage, version, spec_hash, sorted(inputs)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class StageDef:
    """A registered stage: its name, whether a call names a batch, and how a call becomes
    work."""

    name: str
    per_batch: bool
    work: Callable[[Context, StageCall], Work | Skip]
    help: str
    # False for ingest: the ledger, not a run key, makes it idempotent; it always runs
    keyed: bool = True
