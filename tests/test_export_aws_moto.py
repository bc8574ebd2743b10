"""The machine ``driftloop export aws`` writes, executed on moto's Step Functions.

moto runs state machines when its config says so (``execute_state_machine``; its server
reaches itself through ``MOTO_PORT``, which the fixture sets) but not ECS tasks: the
machine runs in its SQS form (:func:`driftloop.export.aws.as_sqs_callbacks`, the one
documented transformation), and the runner here takes each message off the queue and runs
its command: a real ``driftloop`` subprocess in a real project whose sources are in a moto
bucket, which reports back with ``SendTaskSuccess`` / ``SendTaskFailure`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftloop.core.spec import load_spec
from driftloop.export import aws

from .fixtures.moto import SECRET_KEY, MotoServer, S3Env
from .helpers import write_spec
from .serving_helpers import SERVING, serving
from .test_lifecycle import SPEC, land
from .test_predlog_s3 import drifted_traffic

pytestmark = pytest.mark.slow

HANG_GUARD = 900.0  # seconds for one execution: a guard against a hang, never a timing
ROLE = "arn:aws:iam::123456789012:role/driftloop-states"


def _execute_state_machines(server: MotoServer) -> None:
    """moto's config API: Step Functions executes definitions (server-wide)."""
    body = json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode()
    request = urllib.request.Request(f"{server.endpoint}/moto-api/config", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status in (200, 201)


def _project(tmp_path: Path, s3: S3Env) -> Path:
    project = tmp_path / "p"
    spec = SPEC.replace("path: data/raw/s/*.csv", f"path: {s3.url('raw/s/*.csv')}")
    # every second batch trains, and a decay the schedule's monitor finds in the prediction
    # log; drift alone does not: the second execution does not train
    policy = "retrain: {every_batches: 2, on_drift: false, on_decay: true}\n"
    write_spec(
        project,
        spec
        + policy
        + SERVING
        + "monitoring: {permutations: 99}\n"
        + f"outputs: {s3.url('out')}\n",
    )
    return project


def _upload(tmp_path: Path, s3: S3Env, name: str, seed: int, start_day: int) -> None:
    land(tmp_path / "staging", name, 300, seed=seed, start_day=start_day)
    s3.put(f"raw/s/{name}", (tmp_path / "staging" / "data" / "raw" / "s" / name).read_bytes())


class Runner:
    """What ECS would do: run each message's command in the project, with its token."""

    def __init__(self, s3: S3Env, queue_url: str, project: Path) -> None:
        self.sqs, self.sfn = s3.client("sqs"), s3.client("stepfunctions")
        self.queue_url, self.project = queue_url, project
        self.ran: list[list[str]] = []
        self.outputs: list[str] = []

    def execute(self, machine_arn: str, trigger: dict[str, Any]) -> dict[str, Any]:
        name = f"{trigger['trigger']}-{uuid.uuid4().hex[:12]}"  # moto reuses a None name
        execution = self.sfn.start_execution(
            stateMachineArn=machine_arn, name=name, input=json.dumps(trigger)
        )["executionArn"]
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            found: dict[str, Any] = self.sfn.describe_execution(executionArn=execution)
            if found["status"] != "RUNNING":
                history = self.sfn.get_execution_history(executionArn=execution)["events"]
                return {**found, "history": history}
            answer = self.sqs.receive_message(
                QueueUrl=self.queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10
            )
            for message in answer.get("Messages", []):
                self._run(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        pytest.fail(
            f"execution {name} still running after the hang guard; the commands run: "
            f"{self.ran}; the last one's output: {self.outputs[-1:]}"
        )

    def _run(self, body: dict[str, Any]) -> None:
        command = body["Command"]
        assert command[0] == "driftloop"
        env = {**os.environ, **{e["Name"]: e["Value"] for e in body["Environment"]}}
        assert env[aws.TOKEN_ENV]
        done = subprocess.run(
            [sys.executable, "-m", "driftloop.cli", *command[1:]],
            cwd=self.project,  # the image's working directory holds the project
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=HANG_GUARD,
        )
        self.ran.append(command[1:])
        self.outputs.append(done.stdout + done.stderr)


def _entered(history: list[dict[str, Any]]) -> list[str]:
    return [
        e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e
    ]


def test_the_generated_machine_runs_both_branches_on_s3_data(tmp_path: Path, s3_env: S3Env) -> None:
    _execute_state_machines(s3_env.server)
    project = _project(tmp_path, s3_env)
    queue = s3_env.client("sqs").create_queue(QueueName=f"tasks-{uuid.uuid4().hex[:8]}")
    machine = aws.as_sqs_callbacks(aws.state_machine(load_spec(project)), queue["QueueUrl"])
    arn = s3_env.client("stepfunctions").create_state_machine(
        name=f"driftloop-{uuid.uuid4().hex[:8]}", definition=json.dumps(machine), roleArn=ROLE
    )["stateMachineArn"]
    runner = Runner(s3_env, queue["QueueUrl"], project)

    # the first batch: prepared through the Map, the policy trains (nothing trained yet)
    _upload(tmp_path, s3_env, "a.csv", seed=1, start_day=0)
    first = runner.execute(arn, {"trigger": "data", "key": "raw/s/a.csv"})
    assert first["status"] == "SUCCEEDED", (first["history"][-3:], runner.outputs[-2:])
    [batch_a] = {c[3] for c in runner.ran if c[:2] == ["stage", "prep"]}
    assert runner.ran == [
        ["stage", "ingest"],
        ["stage", "prep", "--batch", batch_a],
        ["stage", "features", "--batch", batch_a],
        ["plan"],  # no champion yet: nothing to check
        ["plan"],
        ["stage", "train"],
        ["stage", "promote"],
    ]
    output = json.loads(first["output"])
    assert output["ingest"]["outcome"] == "ran" and output["ingest"]["batch_id"] == batch_a
    assert output["plan"]["train"] is True
    assert output["train"]["outcome"] == "ran" and output["promote"]["outcome"] == "ran"
    assert "ShouldTrain" in _entered(first["history"])
    models = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "models", "--project", str(project)],
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD,
    )
    assert "champion" in models.stdout, models.stdout + models.stderr

    # the second batch: checked against the champion in the second Map; the policy waits
    runner.ran.clear()
    _upload(tmp_path, s3_env, "b.csv", seed=2, start_day=5)
    second = runner.execute(arn, {"trigger": "data", "key": "raw/s/b.csv"})
    assert second["status"] == "SUCCEEDED", (second["history"][-3:], runner.outputs[-2:])
    batch_b = runner.ran[1][3]
    assert batch_b != batch_a
    assert runner.ran == [
        ["stage", "ingest"],
        ["stage", "prep", "--batch", batch_b],
        ["stage", "features", "--batch", batch_b],
        ["plan"],
        ["stage", "monitor", "--batch", batch_b, "--champion", "1"],
        ["plan"],
    ]
    output = json.loads(second["output"])
    assert output["plan"]["train"] is False
    assert "retrain policy waits" in output["plan"]["waiting"]
    assert "Train" not in _entered(second["history"])

    # the schedule, before anything was served: no prediction logged, so nothing to
    # monitor: said (exit 6, with why), not failed; no drift, no decay, so no training
    runner.ran.clear()
    third = runner.execute(arn, {"trigger": "schedule"})
    assert third["status"] == "SUCCEEDED", (third["history"][-3:], runner.outputs[-2:])
    assert runner.ran == [["monitor"]]
    output = json.loads(third["output"])
    assert output["monitor"]["drift"] is False and output["monitor"]["decay"] is False
    assert output["monitor"]["exit_code"] == 6
    assert "no predictions in s3://" in output["monitor"]["nothing"], output["monitor"]
    assert "Train" not in _entered(third["history"])

    # the served traffic moved and its labels turned around: serving logs it to the outputs
    # bucket (as the ECS service would), and the schedule's monitor, a task of its own,
    # finds the decay there and takes the retraining branch
    with serving(project) as server, server.client() as client:
        sent = drifted_traffic(client, np.random.default_rng(7), 8)
    assert s3_env.client().list_objects_v2(
        Bucket=s3_env.bucket, Prefix="out/monitoring/predictions/date="
    )["KeyCount"]
    runner.ran.clear()
    fourth = runner.execute(arn, {"trigger": "schedule"})
    assert fourth["status"] == "SUCCEEDED", (fourth["history"][-3:], runner.outputs[-2:])
    assert runner.ran == [["monitor"], ["stage", "train"], ["stage", "promote"]]
    output = json.loads(fourth["output"])
    assert output["monitor"]["decay"] is True
    assert str(output["monitor"]["report"]).startswith(f"s3://{s3_env.bucket}/out/")
    assert sent == 400
    assert output["train"]["outcome"] == "ran"
    assert "DriftOrDecay" in _entered(fourth["history"])

    shown = json.dumps([first, second, third, fourth], default=str) + "".join(runner.outputs)
    assert SECRET_KEY not in shown
