"""``driftloop export aws``: the state machine and the CloudFormation template written from a
spec, checked as values (in memory), by the real validators (cfn-lint, asl-validator), and
the task token's reports (what a container sends back to Step Functions).

The machine executed on moto's Step Functions, with real ``driftloop stage`` calls on S3
data, is tests/test_export_aws_moto.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.core.errors import (
    ExportError,
    MonitoringError,
    SpecError,
    StorageUnavailableError,
)
from driftloop.core.spec import Spec, load_spec
from driftloop.core.stage import StageCall
from driftloop.export import aws, aws_task
from driftloop.orchestration.planner import Plan
from driftloop.orchestration.runner import StageReport

from .fixtures.validators import npm_tool
from .helpers import write_spec

SPEC = """
name: shop
task: classification
target: y
sources:
  - {name: orders, path: "s3://lake/raw/orders/*.csv"}
  - {name: users, path: "s3://lake/raw/users/2024-*.csv", join: {on: [uid]}}
outputs: s3://lake/driftloop
contract:
  columns:
    uid: {dtype: int}
    x1: {dtype: float}
    y: {dtype: str, allowed: ["no", "yes"], nullable: false}
"""


def _spec(tmp_path: Path, extra: str = "", base: str = SPEC) -> Spec:
    write_spec(tmp_path / "p", base + extra)
    return load_spec(tmp_path / "p")


def _graph(machine: dict[str, Any]) -> dict[str, list[str]]:
    """Each state's successors (Next, Default, Choices, Catch), Map iterators included."""
    edges: dict[str, list[str]] = {}
    for name, state in machine["States"].items():
        nxt = [state[k] for k in ("Next", "Default") if k in state]
        nxt += [c["Next"] for c in state.get("Choices", [])]
        nxt += [c["Next"] for c in state.get("Catch", [])]
        edges[name] = nxt
        if state["Type"] == "Map":
            edges.update(_graph(state["ItemProcessor"]))
    return edges


def _commands(machine: dict[str, Any]) -> list[str]:
    found = []
    for state in aws.task_states(machine):
        (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
        found.append(json.dumps(override.get("Command") or override["Command.$"]))
    return found


# --- the machine -------------------------------------------------------------------


def test_every_step_is_a_fargate_task_that_waits_for_its_token(tmp_path: Path) -> None:
    machine = aws.state_machine(_spec(tmp_path))
    tasks = aws.task_states(machine)
    assert len(tasks) == 9  # ingest, prep, features, plan, check, plan, train, promote, monitor
    for state in tasks:
        assert state["Resource"] == "arn:aws:states:::ecs:runTask.waitForTaskToken"
        (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
        assert override["Environment"] == [
            {"Name": "DRIFTLOOP_TASK_TOKEN", "Value.$": "$$.Task.Token"}
        ]
        assert state["Retry"][0]["ErrorEquals"] == aws.TRANSIENT_ERRORS
        assert state["TimeoutSeconds"] > 0  # a container that died cannot hang the machine
    commands = _commands(machine)
    assert '["driftloop", "stage", "ingest"]' in commands
    assert '["driftloop", "stage", "train"]' in commands
    assert any("'prep', '--batch', $.batch_id" in c for c in commands)
    assert any("'monitor', '--batch', $.batch_id, '--champion', $.champion" in c for c in commands)


def test_batches_are_mapped_and_the_policy_is_a_choice(tmp_path: Path) -> None:
    machine = aws.state_machine(_spec(tmp_path))
    states = machine["States"]
    assert machine["StartAt"] == "Trigger"
    prepare = states["PrepareBatches"]
    assert prepare["Type"] == "Map" and prepare["ItemsPath"] == "$.ingest.plan.batches"
    assert list(prepare["ItemProcessor"]["States"]) == ["Prep", "Features"]
    assert states["CheckBatches"]["ItemsPath"] == "$.plan.checks"
    choice = states["ShouldTrain"]
    assert [(c["Variable"], c["Next"]) for c in choice["Choices"]] == [
        ("$.plan.train", "Train"),
        ("$.plan.promote", "Promote"),
    ]
    edges = _graph(machine)
    assert edges["Train"] == ["Promote", "Failed"]
    assert edges["DriftOrDecay"] == ["Done", "Train"]
    reachable, todo = set(), [machine["StartAt"]]
    while todo:  # every state is reachable from the start, every Next names a state
        name = todo.pop()
        if name not in reachable:
            reachable.add(name)
            todo += edges[name]
    assert reachable == set(states)


def test_the_spec_shapes_the_machine(tmp_path: Path) -> None:
    quiet = aws.state_machine(
        _spec(tmp_path, "monitoring: {on_new_data: false, schedule_minutes: null}\n")
    )
    assert quiet["StartAt"] == "Ingest"
    assert "CheckBatches" not in quiet["States"] and "MonitorPredictions" not in quiet["States"]
    assert quiet["States"]["PrepareBatches"]["Next"] == "Decide"
    no_model = aws.state_machine(_spec(tmp_path, "model: {enabled: false}\n"))
    assert no_model["States"]["PrepareBatches"]["Next"] == "Done"
    assert "Train" not in no_model["States"]
    decay_only = aws.state_machine(_spec(tmp_path, "retrain: {on_drift: false}\n"))
    rule = decay_only["States"]["DriftOrDecay"]["Choices"][0]
    assert rule["Variable"] == "$.monitor.decay"
    neither = aws.state_machine(_spec(tmp_path, "retrain: {on_drift: false, on_decay: false}\n"))
    assert neither["States"]["MonitorPredictions"]["Next"] == "Done"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("s3://lake/raw/orders/*.csv", "data/raw/orders/*.csv"), "sources[orders].path"),
        (("s3://lake/raw/users/", "s3://other/raw/users/"), "2 buckets (lake, other)"),
        (("outputs: s3://lake/driftloop\n", ""), "no 'outputs'"),
        (("name: shop\n", "name: shop\nstate: {url: 'sqlite:///s.db'}\n"), "state.url"),
    ],
)
def test_a_spec_aws_cannot_run_is_refused_with_the_fix(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    spec = _spec(tmp_path, base=SPEC.replace(*change))
    with pytest.raises(ExportError, match="export aws") as caught:
        aws.template(spec)
    assert expected in str(caught.value)
    assert isinstance(caught.value, SpecError)  # the CLI exits 2: the spec needs a change


def test_the_sqs_form_keeps_the_graph_and_carries_command_and_token(tmp_path: Path) -> None:
    machine = aws.state_machine(_spec(tmp_path))
    before = json.dumps(machine, sort_keys=True)
    sqs = aws.as_sqs_callbacks(machine, "http://queue")
    assert json.dumps(machine, sort_keys=True) == before  # the generated machine is untouched
    assert _graph(sqs) == _graph(machine)
    for ecs_state, sqs_state in zip(aws.task_states(machine), aws.task_states(sqs), strict=True):
        assert sqs_state["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
        (override,) = ecs_state["Parameters"]["Overrides"]["ContainerOverrides"]
        body = sqs_state["Parameters"]["MessageBody"]
        assert sqs_state["Parameters"]["QueueUrl"] == "http://queue"
        assert {"Name": CONTAINER_NAME, **body} == override
        for key in ("Retry", "Catch", "TimeoutSeconds", "ResultPath"):
            assert sqs_state.get(key) == ecs_state.get(key)


CONTAINER_NAME = aws.CONTAINER


# --- the template ------------------------------------------------------------------


def _template(tmp_path: Path, extra: str = "") -> dict[str, Any]:
    return aws.template(_spec(tmp_path, extra))


def test_the_template_deploys_the_whole_loop(tmp_path: Path) -> None:
    t = _template(tmp_path)
    kinds = {name: r["Type"] for name, r in t["Resources"].items()}
    for kind in (
        "AWS::S3::Bucket",
        "AWS::Events::Rule",
        "AWS::Scheduler::Schedule",
        "AWS::StepFunctions::StateMachine",
        "AWS::ECS::Cluster",
        "AWS::ECS::TaskDefinition",
        "AWS::ECS::Service",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
    ):
        assert kind in kinds.values(), kind
    bucket = t["Resources"]["RawBucket"]["Properties"]
    assert bucket["BucketName"] == "lake"
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"]
    pattern = t["Resources"]["RawObjectCreated"]["Properties"]["EventPattern"]
    assert pattern["detail"]["object"]["key"] == [
        {"prefix": "raw/orders/"},
        {"prefix": "raw/users/2024-"},
    ]
    schedule = t["Resources"]["MonitorSchedule"]["Properties"]
    assert schedule["ScheduleExpression"] == "rate(60 minutes)"
    assert json.loads(schedule["Target"]["Input"]) == {"trigger": "schedule"}
    serving = t["Resources"]["ServingTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert serving["Command"][:2] == ["driftloop", "serve"]
    definition = json.dumps(t["Resources"]["StateMachine"]["Properties"]["Definition"])
    assert "${" not in definition  # every placeholder became the stack's value
    no_schedule = _template(tmp_path, "monitoring: {schedule_minutes: null}\n")
    assert "MonitorSchedule" not in no_schedule["Resources"]


def test_secrets_are_parameters_or_references_never_values(tmp_path: Path) -> None:
    t = _template(tmp_path)
    params = t["Parameters"]
    assert params["StateDatabaseUrl"]["NoEcho"] and params["MlflowTrackingUri"]["NoEcho"]
    for name in ("StageTaskDefinition", "ServingTaskDefinition"):
        (container,) = t["Resources"][name]["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["DRIFTLOOP_STATE_URL"] == {"Ref": "StateDatabaseUrl"}
        assert env["MLFLOW_TRACKING_URI"] == {"Ref": "MlflowTrackingUri"}
        assert container["Secrets"] == [
            {"Name": "PGPASSWORD", "ValueFrom": {"Ref": "StateDatabasePasswordSecret"}}
        ]
    for param in params.values():
        assert "Default" not in param or "Secret" not in json.dumps(param["Default"])


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    policies = role["Properties"].get("Policies", [])
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def test_the_roles_grant_what_each_part_needs_and_no_more(tmp_path: Path) -> None:
    resources = _template(tmp_path)["Resources"]
    machine_role = _statements(resources["StateMachineRole"])
    assert {s["Action"] for s in machine_role} == {"ecs:RunTask", "iam:PassRole"}
    assert machine_role[0]["Resource"] == {"Ref": "StageTaskDefinition"}
    stage = _statements(resources["StageTaskRole"])
    writes = [s for s in stage if "s3:PutObject" in s["Action"]]
    assert [w["Resource"] for w in writes] == [
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::lake/driftloop/*"}
    ]  # the raw prefixes are read, never written
    reads = [s for s in stage if s["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]]
    assert reads[0]["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::lake/raw/orders/*"},
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::lake/raw/users/2024-*"},
    ]
    for role in ("StageTaskRole", "ServingTaskRole", "StartRole", "ScheduleRole"):
        for statement in _statements(resources[role]):
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                assert "*" not in action, (role, action)
    assert all(
        "states:" not in json.dumps(s["Action"]) for s in _statements(resources["ServingTaskRole"])
    )
    start = _statements(resources["StartRole"])
    assert start == [
        {"Effect": "Allow", "Action": "states:StartExecution", "Resource": {"Ref": "StateMachine"}}
    ]


# --- the validators ----------------------------------------------------------------


def _cfn_lint() -> Any:
    """cfn-lint's API (in process: its rules load once, not per template)."""
    try:
        from cfnlint import api
    except ImportError:
        why = "cfn-lint is not installed"
        if os.environ.get("DRIFTLOOP_REQUIRE_VALIDATORS") == "1":
            pytest.fail(f"{why} and DRIFTLOOP_REQUIRE_VALIDATORS=1; make install")
        pytest.skip(f"{why}; make install (the dev extra) to lint the template")
    return api


def _lint(tool: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*tool, *args], capture_output=True, text=True, check=False, timeout=600)


def test_cfn_lint_passes_the_template_and_catches_a_broken_definition(tmp_path: Path) -> None:
    cfn_lint = _cfn_lint()
    written = aws.write(_spec(tmp_path), tmp_path / "out", image="registry.example/shop:1")
    template = written[1]
    clean = cfn_lint.lint(template.read_text())
    assert clean == [], [str(m) for m in clean]  # warnings too (YAML aliases were one)
    stack = yaml.safe_load(template.read_text())
    assert stack["Parameters"]["Image"]["Default"] == "registry.example/shop:1"
    stack["Resources"]["StateMachine"]["Properties"]["Definition"]["States"]["Done"]["Type"] = (
        "Succeeded"  # not an ASL state type: cfn-lint reads the ASL inside the template
    )
    found = cfn_lint.lint(yaml.safe_dump(stack))
    assert [m.rule.id for m in found] == ["E3601"], [str(m) for m in found]


def test_asl_validator_passes_the_machine_and_catches_a_dangling_next(tmp_path: Path) -> None:
    tool = npm_tool("asl-validator")
    machine_file, _ = aws.write(_spec(tmp_path), tmp_path / "out")
    clean = _lint(tool, "--json-path", str(machine_file))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    machine = json.loads(machine_file.read_text())
    machine["States"]["Train"]["Next"] = "Promotion"  # no such state
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(machine))
    found = _lint(tool, "--json-path", str(broken))
    assert found.returncode != 0, found.stdout
    assert "Promotion" in found.stdout + found.stderr


# --- what a container sends back ---------------------------------------------------


def test_errors_map_to_names_the_machine_retries_or_catches() -> None:
    assert aws_task.error_name(StorageUnavailableError("s3 down")) == "driftloop.TransientError"
    assert aws_task.error_name(MonitoringError("no log")) == "driftloop.MonitoringError"
    assert aws_task.error_name(KeyError("x")) == "driftloop.UnexpectedError"
    assert {aws_task.TRANSIENT, aws_task.UNEXPECTED} == set(aws.TRANSIENT_ERRORS)
    ran = StageReport("prep", "b1", "ran")
    assert aws_task.stage_failure(ran) is None
    assert aws_task.stage_failure(StageReport("prep", "b1", "skipped", error="x")) is None
    waiting = StageReport("prep", "b1", "waiting", error="another worker runs it (h:1)")
    assert aws_task.stage_failure(waiting) == (
        "driftloop.TransientError",
        "prep b1: another worker runs it (h:1)",
    )
    data = StageReport("prep", "b1", "failed", error="quarantine above the limit")
    assert aws_task.stage_failure(data) == (
        "driftloop.StageFailed",
        "prep b1: quarantine above the limit",
    )
    flaky = StageReport("prep", "b1", "failed", error="unexpected OSError", retry=True)
    assert aws_task.stage_failure(flaky) == (
        "driftloop.UnexpectedError",
        "prep b1: unexpected OSError",
    )
    earlier = aws_task.stage_failure(StageReport("train", "-", "failed-earlier", error="x"))
    assert earlier is not None and earlier[0] == "driftloop.StageFailed"
    assert "driftloop batches retry" in earlier[1]


def test_the_plan_becomes_what_the_machine_branches_on() -> None:
    plan = Plan(
        [
            [StageCall("prep", "b2")],
            [StageCall("features", "b1"), StageCall("features", "b2")],
        ]
    )
    assert aws_task.plan_output(plan) == {
        "batches": ["b2", "b1"],
        "checks": [],
        "train": False,
        "promote": False,
        "waiting": None,
    }
    model = Plan(
        [[StageCall("train")], [StageCall("promote")], [StageCall("monitor", "b3", champion="4")]]
    )
    found = aws_task.plan_output(model)
    assert found["checks"] == [{"batch_id": "b3", "champion": "4"}]
    assert found["train"] and found["promote"]
    gate_only = aws_task.plan_output(Plan([[StageCall("promote")]]))
    assert not gate_only["train"] and gate_only["promote"]
    waits = aws_task.plan_output(Plan(waiting="1 new batch(es) since the last training"))
    assert waits["waiting"].startswith("1 new batch")


def test_a_big_manifest_stays_out_of_the_output() -> None:
    report = StageReport("prep", "b1", "ran", 1.0, {"files": ["x" * 100] * 5_000})
    found = aws_task.stage_output(report, Plan())
    assert len(json.dumps(found)) < aws_task.OUTPUT_LIMIT
    assert "omitted" in found["manifest"]
    small = aws_task.stage_output(StageReport("prep", "b1", "ran", 1.0, {"rows": 3}))
    assert small["manifest"] == {"rows": 3} and "plan" not in small
    ingest = aws_task.stage_output(
        StageReport("ingest", "b1", "ran"), Plan([[StageCall("prep", "b1")]])
    )
    assert ingest["plan"]["batches"] == ["b1"]


def test_without_a_token_nothing_is_sent() -> None:
    with aws_task.reporting(None):  # no client made: boto3 would need a region here
        pass
    failed = StageReport("prep", "b1", "failed", error="x")
    aws_task.report_stage(None, failed, lambda: pytest.fail("no plan is made without a token"))
    with pytest.raises(KeyError), aws_task.reporting(""):
        raise KeyError("an empty token is no token: the error goes on, nothing is sent")


# --- the command -------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,  # a hang guard
    )


def test_export_aws_writes_both_files_and_refuses_a_local_project(tmp_path: Path) -> None:
    _spec(tmp_path)
    out = tmp_path / "deploy"
    done = _cli("export", "aws", "--project", str(tmp_path / "p"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["statemachine.asl.json", "template.yaml"]
    assert "wrote" in done.stdout
    machine = json.loads((out / "statemachine.asl.json").read_text())
    assert machine == aws.state_machine(load_spec(tmp_path / "p"))
    local = tmp_path / "local"
    write_spec(local, SPEC.replace("s3://lake/raw/orders/*.csv", "data/raw/orders/*.csv"))
    refused = _cli("export", "aws", "--project", str(local), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: sources[orders].path is 'data/raw/orders/*.csv'")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_the_rate_counts_whole_minutes() -> None:
    assert aws._rate(1) == "rate(1 minute)"
    assert aws._rate(0.2) == "rate(1 minute)"
    assert aws._rate(90.5) == "rate(91 minutes)"
