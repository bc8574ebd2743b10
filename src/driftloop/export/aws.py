"""``driftloop export aws``: the lifecycle as an AWS Step Functions state machine, and a
CloudFormation template that deploys it, written from ``driftloop.yaml``.

Pure functions of the spec (no AWS call, no file read but the spec's): :func:`state_machine`
is the machine in the Amazon States Language, :func:`template` the stack around it, and
:func:`write` puts both in a folder. Every step of the machine is one ECS task on Fargate
(``arn:aws:states:::ecs:runTask.waitForTaskToken``) running a ``driftloop`` command in the
project's image with the task token in ``DRIFTLOOP_TASK_TOKEN``; the command reports its
result with ``SendTaskSuccess`` (or its error with ``SendTaskFailure``, see
:mod:`driftloop.export.aws_task`), and the machine branches on it:

    Trigger ── data ──> Ingest ─> PrepareBatches (Map: Prep -> Features per batch)
       │                   ─> PlanChecks ─> CheckBatches (Map: Check per batch) ─> Decide
       │                   ─> ShouldTrain? ── train ─> Train ─> Promote ─> Done
       │                                  └─ promote only ─> Promote; otherwise Done
       └── schedule ──> MonitorPredictions ─> DriftOrDecay? ── yes ─> Train ...

``PlanChecks`` and ``Decide`` run ``driftloop plan``: the same planner as every other runner
decides which batches to check against the champion and whether the retrain policy trains.

:func:`as_sqs_callbacks` is the one documented transformation of a generated machine: each
ECS task becomes ``arn:aws:states:::sqs:sendMessage.waitForTaskToken`` carrying the same
command and token to a queue, so a machine can run where ECS cannot (the tests run it on
moto's Step Functions with a runner that executes each command).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from driftloop.core.errors import ExportError
from driftloop.core.spec import Spec
from driftloop.core.urls import ObjectUrl, url_scheme

ECS_RESOURCE = "arn:aws:states:::ecs:runTask.waitForTaskToken"
SQS_RESOURCE = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
TOKEN_ENV = "DRIFTLOOP_TASK_TOKEN"
CONTAINER = "driftloop"
PROJECT_DIR = "/project"  # the image's working directory: driftloop.yaml and feature code
SERVING_PORT = 8000
# Retry-able error names a command sends with SendTaskFailure (aws_task.error_name); any
# other driftloop error is a failure of the data or spec, caught and not retried
TRANSIENT_ERRORS = ["driftloop.TransientError", "driftloop.UnexpectedError"]
STAGE_TIMEOUT_SECONDS = 4 * 3600  # a hang guard: a container that died without reporting
TRAIN_TIMEOUT_SECONDS = 12 * 3600
MAP_CONCURRENCY = 10  # batches prepared (or checked) at once
MACHINE_FILE = "statemachine.asl.json"
TEMPLATE_FILE = "template.yaml"

# placeholders in the standalone machine; the template puts the stack's values there
PLACEHOLDERS = {
    "${ClusterArn}": {"Fn::GetAtt": ["Cluster", "Arn"]},
    "${StageTaskDefinitionArn}": {"Ref": "StageTaskDefinition"},
    "${Subnets}": {"Ref": "Subnets"},
    "${StageSecurityGroup}": {"Ref": "StageSecurityGroup"},
    "${AssignPublicIp}": {"Ref": "AssignPublicIp"},
}


# --- what the spec says ------------------------------------------------------------


def raw_location(spec: Spec) -> tuple[str, list[str]]:
    """The bucket every source is in, and each source's key prefix (before any wildcard)."""
    buckets, prefixes = set(), []
    for source in spec.sources:
        if url_scheme(source.path) != "s3":
            raise ExportError(
                f"sources[{source.name}].path is {source.path!r}: export aws needs every "
                "source on S3 (a task on Fargate has no project folder to read); set it to "
                "an s3://bucket/prefix/*.csv URL"
            )
        url = ObjectUrl(source.path)
        buckets.add(url.bucket)
        key = url.key
        cut = min((i for i, ch in enumerate(key) if ch in "*?[{"), default=len(key))
        head = key[:cut]
        prefixes.append(head if cut < len(key) else head.rsplit("/", 1)[0] + "/")
    if len(buckets) != 1:
        raise ExportError(
            f"the sources are in {len(buckets)} buckets ({', '.join(sorted(buckets))}): "
            "export aws creates one raw bucket whose new objects start the pipeline; put "
            "every source in one bucket"
        )
    return buckets.pop(), sorted(set(prefixes))


def outputs_location(spec: Spec) -> ObjectUrl:
    if spec.outputs is None:
        raise ExportError(
            "driftloop.yaml has no 'outputs': export aws needs the outputs on S3 (each "
            "stage runs in a container of its own, with no shared disk); add "
            "'outputs: s3://bucket/prefix'"
        )
    return ObjectUrl(spec.outputs)


def _check_state(spec: Spec) -> None:
    if spec.state.url is not None and spec.state.url.startswith("sqlite"):
        raise ExportError(
            f"state.url is {spec.state.url!r}: each stage runs in a container of its own, so "
            "the state database must be a server they share (export aws); remove state.url "
            "(the stack sets DRIFTLOOP_STATE_URL from its StateDatabaseUrl parameter) or name "
            "a postgresql:// URL"
        )


# --- the state machine -------------------------------------------------------------


def _ecs_task(command: list[str] | str, *, next_: str | None, timeout: int) -> dict[str, Any]:
    """One step: ``command`` (a list, or a ``States.Array(...)`` expression) in a Fargate
    task, the token in its environment; transient failures retried with a backoff."""
    override: dict[str, Any] = {"Name": CONTAINER}
    if isinstance(command, str):
        override["Command.$"] = command
    else:
        override["Command"] = command
    override["Environment"] = [{"Name": TOKEN_ENV, "Value.$": "$$.Task.Token"}]
    state: dict[str, Any] = {
        "Type": "Task",
        "Resource": ECS_RESOURCE,
        "ResultPath": None,  # the state's input goes on (a step's own output: _caught)
        "Parameters": {
            "LaunchType": "FARGATE",
            "Cluster": "${ClusterArn}",
            "TaskDefinition": "${StageTaskDefinitionArn}",
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "Subnets": "${Subnets}",
                    "SecurityGroups": ["${StageSecurityGroup}"],
                    "AssignPublicIp": "${AssignPublicIp}",
                }
            },
            "Overrides": {"ContainerOverrides": [override]},
        },
        "TimeoutSeconds": timeout,
        "Retry": [
            {
                "ErrorEquals": TRANSIENT_ERRORS,
                "IntervalSeconds": 30,
                "MaxAttempts": 6,
                "BackoffRate": 2.0,
            },
            {"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 60, "MaxAttempts": 1},
        ],
    }
    if next_ is None:
        state["End"] = True
    else:
        state["Next"] = next_
    return state


def _caught(state: dict[str, Any], result_path: str | None) -> dict[str, Any]:
    state["ResultPath"] = result_path
    state["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]
    return state


def _map(
    items: str, selector: dict[str, str], states: dict[str, Any], start: str, next_: str
) -> dict[str, Any]:
    return _caught(
        {
            "Type": "Map",
            "ItemsPath": items,
            "ItemSelector": selector,
            "MaxConcurrency": MAP_CONCURRENCY,
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": start,
                "States": states,
            },
            "Next": next_,
        },
        None,  # the input goes on unchanged: what the batches did is in the state database
    )


def _stage(name: str, *args: str) -> list[str]:
    return ["driftloop", "stage", name, *args]


def state_machine(spec: Spec) -> dict[str, Any]:
    """The lifecycle of ``spec`` as an ASL state machine (placeholders ``${...}`` for the
    stack's values, filled by the template; see :data:`PLACEHOLDERS`)."""
    raw_location(spec)
    outputs_location(spec)
    _check_state(spec)
    model = spec.model.enabled
    checks = model and spec.monitoring.on_new_data
    after_prep = ("PlanChecks" if checks else "Decide") if model else "Done"
    batch = "States.Array('driftloop', 'stage', '{0}', '--batch', $.batch_id)"
    states: dict[str, Any] = {
        "Ingest": _caught(
            _ecs_task(_stage("ingest"), next_="PrepareBatches", timeout=STAGE_TIMEOUT_SECONDS),
            "$.ingest",
        ),
        "PrepareBatches": _map(
            "$.ingest.plan.batches",
            {"batch_id.$": "$$.Map.Item.Value"},
            {
                "Prep": _ecs_task(
                    batch.format("prep"), next_="Features", timeout=STAGE_TIMEOUT_SECONDS
                ),
                "Features": _ecs_task(
                    batch.format("features"), next_=None, timeout=STAGE_TIMEOUT_SECONDS
                ),
            },
            "Prep",
            after_prep,
        ),
    }
    if checks:
        states["PlanChecks"] = _caught(
            _ecs_task(["driftloop", "plan"], next_="CheckBatches", timeout=STAGE_TIMEOUT_SECONDS),
            "$.plan",
        )
        states["CheckBatches"] = _map(
            "$.plan.checks",
            {
                "batch_id.$": "$$.Map.Item.Value.batch_id",
                "champion.$": "$$.Map.Item.Value.champion",
            },
            {
                "Check": _ecs_task(
                    "States.Array('driftloop', 'stage', 'monitor', '--batch', $.batch_id, "
                    "'--champion', $.champion)",
                    next_=None,
                    timeout=STAGE_TIMEOUT_SECONDS,
                )
            },
            "Check",
            "Decide",
        )
    if model:
        states["Decide"] = _caught(
            _ecs_task(["driftloop", "plan"], next_="ShouldTrain", timeout=STAGE_TIMEOUT_SECONDS),
            "$.plan",
        )
        states["ShouldTrain"] = {
            "Type": "Choice",
            "Comment": "the retrain policy, as the planner applied it",
            "Choices": [
                {"Variable": "$.plan.train", "BooleanEquals": True, "Next": "Train"},
                {"Variable": "$.plan.promote", "BooleanEquals": True, "Next": "Promote"},
            ],
            "Default": "Done",
        }
        states["Train"] = _caught(
            _ecs_task(_stage("train"), next_="Promote", timeout=TRAIN_TIMEOUT_SECONDS), "$.train"
        )
        states["Promote"] = _caught(
            _ecs_task(_stage("promote"), next_="Done", timeout=STAGE_TIMEOUT_SECONDS), "$.promote"
        )
    start = "Ingest"
    if model and spec.monitoring.schedule_minutes is not None:
        start = "Trigger"
        states["Trigger"] = {
            "Type": "Choice",
            "Comment": "the monitoring schedule, or data landing (anything else)",
            "Choices": [
                {
                    "And": [
                        {"Variable": "$.trigger", "IsPresent": True},
                        {"Variable": "$.trigger", "StringEquals": "schedule"},
                    ],
                    "Next": "MonitorPredictions",
                }
            ],
            "Default": "Ingest",
        }
        signals = []
        if spec.retrain.on_drift:
            signals.append({"Variable": "$.monitor.drift", "BooleanEquals": True})
        if spec.retrain.on_decay:
            signals.append({"Variable": "$.monitor.decay", "BooleanEquals": True})
        states["MonitorPredictions"] = _caught(
            _ecs_task(
                ["driftloop", "monitor"],
                next_="DriftOrDecay" if signals else "Done",
                timeout=STAGE_TIMEOUT_SECONDS,
            ),
            "$.monitor",
        )
        if signals:
            states["DriftOrDecay"] = {
                "Type": "Choice",
                "Comment": "retrain.on_drift / on_decay on the prediction log's verdict",
                "Choices": [
                    {"Or": signals, "Next": "Train"}
                    if len(signals) > 1
                    else {**signals[0], "Next": "Train"}
                ],
                "Default": "Done",
            }
    states["Done"] = {"Type": "Succeed"}
    states["Failed"] = {
        "Type": "Fail",
        "Error": "driftloop.StageFailed",
        "Cause": "a driftloop command failed; its error and cause are in the execution "
        "history (and in 'driftloop batches')",
    }
    return {
        "Comment": f"driftloop lifecycle of {spec.name}, generated by driftloop export aws",
        "StartAt": start,
        "States": {start: states[start], **{k: v for k, v in states.items() if k != start}},
    }


def task_states(machine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Task state of a machine, those inside Map states included."""
    found = []
    for state in machine["States"].values():
        if state["Type"] == "Task":
            found.append(state)
        if state["Type"] == "Map":
            found.extend(task_states(state["ItemProcessor"]))
    return found


def as_sqs_callbacks(machine: dict[str, Any], queue_url: str) -> dict[str, Any]:
    """The same machine with each ECS task sent to ``queue_url`` instead.

    Each ``ecs:runTask.waitForTaskToken`` state becomes ``sqs:sendMessage.waitForTaskToken``
    whose message body is the container override: ``Command`` (or ``Command.$``) and
    ``Environment`` with the task token. Whatever reads the queue runs the command with that
    environment, in the project's folder; the machine's graph, retries and catches are
    unchanged. For a place where ECS does not run (moto's Step Functions in the tests).
    """
    changed = copy.deepcopy(machine)
    for state in task_states(changed):
        if state["Resource"] != ECS_RESOURCE:
            continue
        (override,) = state["Parameters"]["Overrides"]["ContainerOverrides"]
        body = {k: v for k, v in override.items() if k != "Name"}
        state["Resource"] = SQS_RESOURCE
        state["Parameters"] = {"QueueUrl": queue_url, "MessageBody": body}
    return changed


# --- the CloudFormation template ---------------------------------------------------


def _with_stack_values(node: Any) -> Any:
    """The machine with its placeholders as CloudFormation intrinsics."""
    if isinstance(node, dict):
        return {k: _with_stack_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_stack_values(v) for v in node]
    if isinstance(node, str) and node in PLACEHOLDERS:
        return PLACEHOLDERS[node]
    return node


def _assume(service: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }


def _role(
    service: str, statements: list[dict[str, Any]], managed: list[Any] | None = None
) -> dict[str, Any]:
    props: dict[str, Any] = {"AssumeRolePolicyDocument": _assume(service)}
    if statements:
        props["Policies"] = [
            {
                "PolicyName": "driftloop",
                "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
            }
        ]
    if managed:
        props["ManagedPolicyArns"] = managed
    return {"Type": "AWS::IAM::Role", "Properties": props}


def _arn(bucket: str, key: str = "") -> dict[str, Any]:
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{bucket}{'/' + key if key else ''}"}


def _s3_statements(bucket: str, prefixes: list[str], outputs: ObjectUrl) -> list[dict[str, Any]]:
    """Read the raw prefixes (never write them); read and write the outputs prefix."""
    out_prefix = outputs.key.rstrip("/") + "/" if outputs.key else ""
    listing: list[tuple[str, list[str]]] = [(bucket, prefixes)]
    if outputs.bucket == bucket:
        listing = [(bucket, sorted({*prefixes, out_prefix}))]
    else:
        listing.append((outputs.bucket, [out_prefix]))
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": _arn(name),
            "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in listed]}},
        }
        for name, listed in listing
    ]
    statements.append(
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": [_arn(bucket, f"{p}*") for p in prefixes],
        }
    )
    statements.append(
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": _arn(outputs.bucket, f"{out_prefix}*"),
        }
    )
    return statements


def _container(spec: Spec, command: list[str] | None, port: int | None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "Name": CONTAINER,
        "Image": {"Ref": "Image"},
        "Essential": True,
        "WorkingDirectory": PROJECT_DIR,
        "Environment": [
            {"Name": "DRIFTLOOP_STATE_URL", "Value": {"Ref": "StateDatabaseUrl"}},
            {"Name": "MLFLOW_TRACKING_URI", "Value": {"Ref": "MlflowTrackingUri"}},
            {"Name": "AWS_DEFAULT_REGION", "Value": {"Ref": "AWS::Region"}},
        ],
        "Secrets": [{"Name": "PGPASSWORD", "ValueFrom": {"Ref": "StateDatabasePasswordSecret"}}],
        "LogConfiguration": {
            "LogDriver": "awslogs",
            "Options": {
                "awslogs-group": {"Ref": "LogGroup"},
                "awslogs-region": {"Ref": "AWS::Region"},
                "awslogs-stream-prefix": "driftloop",
            },
        },
    }
    if command is not None:
        container["Command"] = command
    if port is not None:
        container["PortMappings"] = [{"ContainerPort": port, "Protocol": "tcp"}]
    return container


def _parameters(spec: Spec) -> dict[str, Any]:
    return {
        "Image": {
            "Type": "String",
            "Description": "The driftloop image with this project in /project (driftloop.yaml "
            "and the feature module)",
        },
        "StateDatabaseUrl": {
            "Type": "String",
            "NoEcho": True,
            "Description": "postgresql://user@host:5432/db, without the password (that is "
            "StateDatabasePasswordSecret)",
        },
        "StateDatabasePasswordSecret": {
            "Type": "String",
            "Description": "ARN of the Secrets Manager secret holding the database password "
            "(given to the containers as PGPASSWORD)",
        },
        "MlflowTrackingUri": {
            "Type": "String",
            "NoEcho": True,
            "Description": "The MLflow tracking server (http(s)://host:port), shared by every task",
        },
        "VpcId": {"Type": "AWS::EC2::VPC::Id"},
        "Subnets": {
            "Type": "List<AWS::EC2::Subnet::Id>",
            "Description": "Subnets (two zones at least) for the tasks and the load balancer",
        },
        "AssignPublicIp": {
            "Type": "String",
            "AllowedValues": ["ENABLED", "DISABLED"],
            "Default": "DISABLED",
            "Description": "ENABLED for public subnets without a NAT gateway (to pull the image)",
        },
        "ServingIngressCidr": {
            "Type": "String",
            "Default": "10.0.0.0/8",
            "Description": "Who may reach the load balancer",
        },
        "StageCpu": {"Type": "String", "Default": "1024"},
        "StageMemory": {"Type": "String", "Default": "4096"},
        "ServingCpu": {"Type": "String", "Default": "1024"},
        "ServingMemory": {"Type": "String", "Default": "2048"},
        "ServingCount": {"Type": "Number", "Default": 2, "MinValue": 1},
    }


START_EXECUTION = {
    "Effect": "Allow",
    "Action": "states:StartExecution",
    "Resource": {"Ref": "StateMachine"},
}


def _rate(minutes: float) -> str:
    whole = max(1, math.ceil(minutes))  # EventBridge Scheduler counts whole minutes
    return f"rate({whole} minute{'s' if whole > 1 else ''})"


def template(spec: Spec) -> dict[str, Any]:
    """The CloudFormation template: bucket, rule, schedule, machine, cluster, tasks, roles,
    the serving service behind a load balancer; every secret a parameter or a reference."""
    bucket, prefixes = raw_location(spec)
    outputs = outputs_location(spec)
    machine = state_machine(spec)
    ecs_managed = [
        {
            "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
            "AmazonECSTaskExecutionRolePolicy"
        }
    ]
    task_role_send = {
        "Effect": "Allow",
        # SendTask* take no resource: a token is the permission for its one task
        "Action": ["states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat"],
        "Resource": "*",
    }
    s3 = _s3_statements(bucket, prefixes, outputs)
    resources: dict[str, Any] = {
        "RawBucket": {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BucketName": bucket,
                "VersioningConfiguration": {"Status": "Enabled"},
                "NotificationConfiguration": {
                    "EventBridgeConfiguration": {"EventBridgeEnabled": True}
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                },
            },
        },
        "Cluster": {"Type": "AWS::ECS::Cluster"},
        "LogGroup": {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": 30}},
        "ExecutionRole": _role(
            "ecs-tasks.amazonaws.com",
            [
                {
                    "Effect": "Allow",
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": {"Ref": "StateDatabasePasswordSecret"},
                }
            ],
            ecs_managed,
        ),
        "StageTaskRole": _role("ecs-tasks.amazonaws.com", [*s3, task_role_send]),
        "ServingTaskRole": _role("ecs-tasks.amazonaws.com", s3),
        "StageSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "driftloop stage tasks: no inbound traffic",
                "VpcId": {"Ref": "VpcId"},
            },
        },
        "LoadBalancerSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "driftloop serving load balancer",
                "VpcId": {"Ref": "VpcId"},
                "SecurityGroupIngress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 80,
                        "ToPort": 80,
                        "CidrIp": {"Ref": "ServingIngressCidr"},
                    }
                ],
            },
        },
        "ServingSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "driftloop serving tasks: the load balancer only",
                "VpcId": {"Ref": "VpcId"},
                "SecurityGroupIngress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": SERVING_PORT,
                        "ToPort": SERVING_PORT,
                        "SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"},
                    }
                ],
            },
        },
        "StageTaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": {"Ref": "StageCpu"},
                "Memory": {"Ref": "StageMemory"},
                "ExecutionRoleArn": {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
                "TaskRoleArn": {"Fn::GetAtt": ["StageTaskRole", "Arn"]},
                "ContainerDefinitions": [_container(spec, None, None)],
            },
        },
        "ServingTaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": {"Ref": "ServingCpu"},
                "Memory": {"Ref": "ServingMemory"},
                "ExecutionRoleArn": {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
                "TaskRoleArn": {"Fn::GetAtt": ["ServingTaskRole", "Arn"]},
                "ContainerDefinitions": [
                    _container(
                        spec,
                        ["driftloop", "serve", "--host", "0.0.0.0", "--port", str(SERVING_PORT)],
                        SERVING_PORT,
                    )
                ],
            },
        },
        "LoadBalancer": {
            "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "Properties": {
                "Scheme": "internal",
                "Subnets": {"Ref": "Subnets"},
                "SecurityGroups": [{"Ref": "LoadBalancerSecurityGroup"}],
            },
        },
        "TargetGroup": {
            "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
            "Properties": {
                "TargetType": "ip",
                "Protocol": "HTTP",
                "Port": SERVING_PORT,
                "VpcId": {"Ref": "VpcId"},
                "HealthCheckPath": "/health",
            },
        },
        "Listener": {
            "Type": "AWS::ElasticLoadBalancingV2::Listener",
            "Properties": {
                "LoadBalancerArn": {"Ref": "LoadBalancer"},
                "Port": 80,
                "Protocol": "HTTP",
                "DefaultActions": [{"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}],
            },
        },
        "ServingService": {
            "Type": "AWS::ECS::Service",
            "DependsOn": "Listener",
            "Properties": {
                "Cluster": {"Ref": "Cluster"},
                "LaunchType": "FARGATE",
                "TaskDefinition": {"Ref": "ServingTaskDefinition"},
                "DesiredCount": {"Ref": "ServingCount"},
                "NetworkConfiguration": {
                    "AwsvpcConfiguration": {
                        "Subnets": {"Ref": "Subnets"},
                        "SecurityGroups": [{"Ref": "ServingSecurityGroup"}],
                        "AssignPublicIp": {"Ref": "AssignPublicIp"},
                    }
                },
                "LoadBalancers": [
                    {
                        "ContainerName": CONTAINER,
                        "ContainerPort": SERVING_PORT,
                        "TargetGroupArn": {"Ref": "TargetGroup"},
                    }
                ],
            },
        },
        "StateMachineRole": _role(
            "states.amazonaws.com",
            [
                {
                    "Effect": "Allow",
                    "Action": "ecs:RunTask",
                    "Resource": {"Ref": "StageTaskDefinition"},
                    "Condition": {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["Cluster", "Arn"]}}},
                },
                {
                    "Effect": "Allow",
                    "Action": "iam:PassRole",
                    "Resource": [
                        {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
                        {"Fn::GetAtt": ["StageTaskRole", "Arn"]},
                    ],
                },
            ],
        ),
        "StateMachine": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "StateMachineType": "STANDARD",
                "RoleArn": {"Fn::GetAtt": ["StateMachineRole", "Arn"]},
                "Definition": _with_stack_values(machine),
            },
        },
        "StartRole": _role(
            "events.amazonaws.com",
            [START_EXECUTION],
        ),
        "RawObjectCreated": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Description": "a new object under the raw prefix starts the lifecycle",
                "EventPattern": {
                    "source": ["aws.s3"],
                    "detail-type": ["Object Created"],
                    "detail": {
                        "bucket": {"name": [{"Ref": "RawBucket"}]},
                        "object": {"key": [{"prefix": p} for p in prefixes]},
                    },
                },
                "Targets": [
                    {
                        "Id": "lifecycle",
                        "Arn": {"Ref": "StateMachine"},
                        "RoleArn": {"Fn::GetAtt": ["StartRole", "Arn"]},
                        "InputTransformer": {
                            "InputPathsMap": {"key": "$.detail.object.key"},
                            "InputTemplate": '{"trigger": "data", "key": <key>}',
                        },
                    }
                ],
            },
        },
    }
    if "Trigger" in machine["States"]:
        minutes = spec.monitoring.schedule_minutes
        assert minutes is not None  # the machine has the branch only with a schedule
        resources["ScheduleRole"] = _role(
            "scheduler.amazonaws.com",
            [START_EXECUTION],
        )
        resources["MonitorSchedule"] = {
            "Type": "AWS::Scheduler::Schedule",
            "Properties": {
                "Description": "the prediction-log monitor (monitoring.schedule_minutes)",
                "ScheduleExpression": _rate(minutes),
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "Target": {
                    "Arn": {"Ref": "StateMachine"},
                    "RoleArn": {"Fn::GetAtt": ["ScheduleRole", "Arn"]},
                    "Input": json.dumps({"trigger": "schedule"}),
                },
            },
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"driftloop {spec.name}: the lifecycle on Step Functions and Fargate, "
        "and serving behind a load balancer (generated by driftloop export aws)",
        "Parameters": _parameters(spec),
        "Resources": resources,
        "Outputs": {
            "StateMachineArn": {"Value": {"Ref": "StateMachine"}},
            "ServingUrl": {"Value": {"Fn::Sub": "http://${LoadBalancer.DNSName}"}},
            "RawBucket": {"Value": {"Ref": "RawBucket"}},
        },
    }


def write(spec: Spec, out: Path, image: str | None = None) -> list[Path]:
    """Write the machine and the template into ``out``; ``image`` becomes the Image
    parameter's default. Returns the files written."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # CloudFormation rejects YAML anchors and aliases

    machine = state_machine(spec)
    stack = template(spec)
    if image is not None:
        stack["Parameters"]["Image"]["Default"] = image
    out.mkdir(parents=True, exist_ok=True)
    machine_path, template_path = out / MACHINE_FILE, out / TEMPLATE_FILE
    machine_path.write_text(json.dumps(machine, indent=2) + "\n", encoding="utf-8")
    template_path.write_text(
        "# generated by driftloop export aws from driftloop.yaml; deploy with\n"
        "# aws cloudformation deploy --template-file template.yaml --capabilities CAPABILITY_IAM\n"
        + yaml.dump(stack, Dumper=Dumper, sort_keys=False, width=100),
        encoding="utf-8",
    )
    return [machine_path, template_path]
