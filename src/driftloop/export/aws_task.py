"""The container's side of a Step Functions task token (``driftloop export aws``).

A step of the generated machine runs ``driftloop stage NAME``, ``driftloop plan`` or
``driftloop monitor`` with ``DRIFTLOOP_TASK_TOKEN`` set (or ``--task-token``). The command
runs as usual, then reports to Step Functions: ``SendTaskSuccess`` with a JSON summary the
machine branches on (:func:`stage_output`, :func:`plan_output`, :func:`monitor_output`), or
``SendTaskFailure`` with an error name the machine's Retry and Catch know
(:func:`error_name`): ``driftloop.TransientError`` (retried: a store or registry that did not
answer, a claim another worker holds), ``driftloop.UnexpectedError`` (retried: a failure that
is not driftloop's verdict on the data), or ``driftloop.<ErrorClass>`` / ``driftloop.StageFailed``
(caught: the data or spec needs a fix). The functions that build what is sent are pure;
:func:`send_success` and :func:`send_failure` are the edge (boto3, the standard AWS settings).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from driftloop.core.errors import DriftloopError, TransientError, first_line
from driftloop.core.redact import redact

if TYPE_CHECKING:
    from driftloop.monitoring.run import MonitorResult
    from driftloop.orchestration.planner import Plan
    from driftloop.orchestration.runner import StageReport

OUTPUT_LIMIT = 250_000  # SendTaskSuccess takes 256 KiB of output
CAUSE_LIMIT = 32_000  # SendTaskFailure's cause: 32,768 characters
TRANSIENT = "driftloop.TransientError"
UNEXPECTED = "driftloop.UnexpectedError"
STAGE_FAILED = "driftloop.StageFailed"


def error_name(exc: BaseException) -> str:
    """The name Step Functions sees for an exception: Retry-able or Catch-able."""
    if isinstance(exc, TransientError):
        return TRANSIENT
    if isinstance(exc, DriftloopError):
        return f"driftloop.{type(exc).__name__}"
    return UNEXPECTED


def stage_failure(report: StageReport) -> tuple[str, str] | None:
    """A stage call's failure as (error name, cause), or None when it succeeded (ran, a
    cache hit, skipped, dismissed by a user)."""
    where = f"{report.stage} {report.batch_id}"
    if report.outcome == "waiting":  # another worker holds it, or a backoff: later
        return TRANSIENT, f"{where}: {report.error}"
    if report.outcome == "failed":
        return (UNEXPECTED if report.retry else STAGE_FAILED), f"{where}: {report.error}"
    if report.outcome == "failed-earlier":
        return STAGE_FAILED, (
            f"{where} failed earlier on the same data and spec: {report.error}; fix the data "
            "or spec, or run 'driftloop batches retry' / 'dismiss'"
        )
    return None


def plan_output(plan: Plan) -> dict[str, Any]:
    """What the machine branches on after a plan: the batches to prepare (prep or features
    planned), the checks to make (batch and champion), whether to train and to promote."""
    batches: list[str] = []
    for call in plan.calls:
        if call.stage in ("prep", "features") and call.batch_id not in batches:
            batches.append(str(call.batch_id))
    checks = [
        {"batch_id": c.batch_id, "champion": c.champion} for c in plan.calls if c.stage == "monitor"
    ]
    return {
        "batches": batches,
        "checks": checks,
        "train": any(c.stage == "train" for c in plan.calls),
        "promote": any(c.stage == "promote" for c in plan.calls),
        "waiting": plan.waiting,
    }


def stage_output(report: StageReport, plan: Plan | None = None) -> dict[str, Any]:
    """A successful stage call: its report and manifest, and for ingest the plan made after
    it (its ``plan.batches`` is what the machine's Map goes over)."""
    found = report.to_json()
    if plan is not None:
        found["plan"] = plan_output(plan)
    if len(_text(found)) > OUTPUT_LIMIT:  # a big manifest stays in the outputs, not here
        found["manifest"] = {"omitted": f"more than {OUTPUT_LIMIT} bytes; see the outputs"}
    return found


def monitor_output(result: MonitorResult) -> dict[str, Any]:
    return {
        "drift": result.drift_detected,
        "decay": result.performance_degraded,
        "exit_code": result.exit_code,
        "report": None if result.json_path is None else str(result.json_path),
    }


def nothing_output(why: str) -> dict[str, Any]:
    """What ``driftloop monitor`` sends when there is nothing to monitor (exit 6): no
    drift, no decay, so the machine's choice ends the execution, which succeeds."""
    return {"drift": False, "decay": False, "exit_code": 6, "report": None, "nothing": why}


def _text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str, sort_keys=True)


def _client() -> Any:
    import boto3

    return boto3.client("stepfunctions")  # region, endpoint, credentials: the standard ones


def send_success(token: str, payload: dict[str, Any]) -> None:
    _client().send_task_success(taskToken=token, output=redact(_text(payload)))


def send_failure(token: str, error: str, cause: str) -> None:
    _client().send_task_failure(
        taskToken=token, error=error[:256], cause=redact(cause)[:CAUSE_LIMIT]
    )


@contextmanager
def reporting(token: str | None) -> Iterator[None]:
    """Any exception the block raises is sent with ``SendTaskFailure`` (then raised again),
    so the machine does not wait for a token that never comes."""
    if not token:
        yield
        return
    try:
        yield
    except Exception as exc:
        send_failure(token, error_name(exc), first_line(exc))
        raise


def report_stage(token: str | None, report: StageReport, plan_after: Callable[[], Plan]) -> None:
    """Send a stage call's result: its failure, or its output (ingest's with the plan made
    after it, by ``plan_after``: the caller's, since this layer does not plan)."""
    if not token:
        return
    failure = stage_failure(report)
    if failure is not None:
        send_failure(token, *failure)
        return
    if report.stage != "ingest":  # only ingest's step branches on the plan after it
        send_success(token, stage_output(report))
        return
    send_success(token, stage_output(report, plan_after()))
