"""Micro-batching: the records of concurrent requests are scored together.

Scoring one record costs nearly as much as scoring a few hundred (a model's per-call
overhead dominates), so requests queue up and one prediction thread takes everything
waiting, up to ``max_records``, in a single call. Nothing waits on purpose: while one batch
is scored, the next one gathers (continuous batching), so a lone request is scored at once
and a crowd shares the cost. Each batch is scored by one model, read from the slot when the
batch starts, so every response names the version that actually scored it.

A request that finds the batcher idle (nothing queued, nothing being scored) and fits the
row path is scored by its own handler, on the event loop: the queue and the batcher task's
wake-up would only add latency to a batch of one. Scored batches go to the prediction log
after the answers, as they are (the log's writer thread makes the frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from driftloop.serving.champion import ModelSlot
from driftloop.serving.model import Scored, ServedModel
from driftloop.serving.records import Problem
from driftloop.serving.rowpath import ROW_LIMIT

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request's records, waiting to be scored."""

    records: list[dict[str, str | None]]
    single: bool  # the body was one object, not a list: problems name no record index
    request_id: str
    received: datetime
    future: asyncio.Future[Answer] | None = field(repr=False)  # None: scored by its handler


@dataclass
class Answer:
    """What one request gets back."""

    model: ServedModel
    outputs: list[dict[str, Any]]  # one per record when accepted
    problems: list[Problem]  # why records were refused (the request fails with 422)
    error: str | None = None  # the model failed on records the contract accepted


class OverloadedError(Exception):
    """More records wait to be scored than ``serving.queue_max_records``."""


class MicroBatcher:
    """Queue requests; score them in batches on one thread."""

    def __init__(
        self,
        slot: ModelSlot,
        *,
        max_records: int,
        on_scored: Callable[[ServedModel, list[Job], Scored], None],
        max_queued: int = 20_000,
        after_answers: Callable[[ServedModel, list[Job], Scored], None] | None = None,
    ) -> None:
        self.slot = slot
        self.max_records = max_records
        self.max_queued = max_queued
        self.queued = 0  # records waiting (event-loop thread only)
        self._on_scored = on_scored  # before the answers (metrics)
        self._after_answers = after_answers  # after them (the prediction log)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="driftloop-predict")
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # the batcher task holds a batch (event-loop thread only)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def score(
        self,
        records: list[dict[str, str | None]],
        *,
        single: bool,
        request_id: str,
        received: datetime,
    ) -> Answer:
        if self.queued + len(records) > self.max_queued:
            raise OverloadedError(f"{self.queued} records are waiting to be scored")
        model = self.slot.current
        if not self._busy and self._queue.empty() and len(records) <= ROW_LIMIT and model:
            # Nothing waits and nothing is being scored: score here (the row path's ~0.1 ms,
            # synchronous, so no other request can slip in between).
            job = Job(records, single, request_id, received, None)
            scored: list[tuple[list[Job], Scored]] = []
            answers = self._score_inline(model, [job], scored)
            if answers is not None:
                self._logged(model, scored)
                return answers[0]
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Job(records, single, request_id, received, future))
        self.queued += len(records)
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._busy = False
            jobs = [await self._queue.get()]
            self._busy = True
            size = len(jobs[0].records)
            while size < self.max_records and not self._queue.empty():
                job = self._queue.get_nowait()
                jobs.append(job)
                size += len(job.records)
            self.queued -= size
            model = self.slot.current
            if model is None:  # the route checks readiness first; a slot never empties
                raise RuntimeError("micro-batcher started before a model was loaded")
            scored: list[tuple[list[Job], Scored]] = []
            # A small clean batch on the row path costs about 0.1 ms: scored here, on the
            # event loop, it skips two thread hand-offs that cost more under load. Anything
            # else (or anything the row path declines) goes to the prediction thread.
            answers = self._score_inline(model, jobs, scored) if size <= ROW_LIMIT else None
            try:
                if answers is None:
                    answers = await loop.run_in_executor(
                        self._executor, self._score, model, jobs, scored
                    )
            except Exception as exc:  # a bug here must not stop the loop for everyone
                log.exception("scoring a batch failed")
                answers = [Answer(model, [], [], f"{type(exc).__name__}: {exc}") for _ in jobs]
            for job, answer in zip(jobs, answers, strict=True):
                if job.future is not None and not job.future.done():
                    job.future.set_result(answer)
            self._logged(model, scored)

    def _score(
        self, model: ServedModel, jobs: list[Job], done: list[tuple[list[Job], Scored]]
    ) -> list[Answer]:
        """Answers for the jobs; what was scored is added to ``done`` (for the log)."""
        records = [r for job in jobs for r in job.records]
        try:
            scored = model.score(records)
        except Exception:
            if len(jobs) == 1:
                raise
            # One request's records broke the model: score each request alone, so the
            # others are still answered and only the culprit fails.
            return [self._score_alone(model, job, done) for job in jobs]
        self._on_scored(model, jobs, scored)
        done.append((jobs, scored))
        return split(model, jobs, scored)

    def _score_inline(
        self, model: ServedModel, jobs: list[Job], done: list[tuple[list[Job], Scored]]
    ) -> list[Answer] | None:
        """Answers from the row path, or None (no row path, declined, or it failed: the
        prediction thread then scores the batch as usual)."""
        try:
            scored = model.score_rows([r for job in jobs for r in job.records])
            if scored is None:
                return None
            self._on_scored(model, jobs, scored)
        except Exception:
            log.exception("the row path failed; the batch goes to the prediction thread")
            return None
        done.append((jobs, scored))
        return split(model, jobs, scored)

    def _logged(self, model: ServedModel, done: list[tuple[list[Job], Scored]]) -> None:
        """The prediction log after the answers, in the order batches were scored (a hand-off
        of the batch as it is: the log's writer thread builds the frames)."""
        if self._after_answers is None:
            return
        for jobs, scored in done:
            try:
                self._after_answers(model, jobs, scored)
            except Exception:  # the answers are out; a broken log must not stop the loop
                log.exception("logging a scored batch failed")

    def _score_alone(
        self, model: ServedModel, job: Job, done: list[tuple[list[Job], Scored]]
    ) -> Answer:
        try:
            return self._score(model, [job], done)[0]
        except Exception as exc:
            log.exception(
                "model %s v%s failed on request %s", model.name, model.version, job.request_id
            )
            return Answer(model, [], [], f"{type(exc).__name__}: {exc}")


def split(model: ServedModel, jobs: list[Job], scored: Scored) -> list[Answer]:
    """Each request's share of a scored batch."""
    classes = model.classes
    slot_of = {position: k for k, position in enumerate(scored.accepted)}
    flags = scored.checked.flags
    answers = []
    start = 0
    for job in jobs:
        positions = range(start, start + len(job.records))
        start += len(job.records)
        problems = [
            _relocate(p, positions.start, job.single) for i in positions for p in scored.problems(i)
        ]
        if problems:
            answers.append(Answer(model, [], problems))
            continue
        outputs = []
        for i in positions:
            k = slot_of[i]
            out: dict[str, Any] = {}
            if classes is None:
                out["prediction"] = float(scored.labels[k])
            else:
                out["prediction"] = str(scored.labels[k])
                row = scored.proba[k]
                out["probabilities"] = {c: float(row[j]) for j, c in enumerate(classes)}
            if i in flags:
                out["flags"] = flags[i]
            outputs.append(out)
        answers.append(Answer(model, outputs, []))
    return answers


def _relocate(problem: Problem, offset: int, single: bool) -> Problem:
    """A location in the batch as a location in the request's body."""
    body, position, *rest = problem.loc
    assert isinstance(position, int)
    loc = (body, *rest) if single else (body, position - offset, *rest)
    return Problem(loc, problem.msg, problem.type, problem.input)
