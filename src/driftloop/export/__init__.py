"""What driftloop writes for other tools from a project's ``driftloop.yaml``.

Each target is a module of pure functions from the spec to the files it needs (a CI workflow
for GitHub Actions or Azure Pipelines in :mod:`driftloop.export.ci`; a Step Functions state
machine and a CloudFormation template in :mod:`driftloop.export.aws`, whose steps run the
same ``driftloop stage ...`` calls the planner makes, and report back through
:mod:`driftloop.export.aws_task`; an Airflow 3 DAG in :mod:`driftloop.export.airflow`, whose
tasks run those calls as subprocesses).
"""
