"""What driftloop writes for other runners from a project's ``driftloop.yaml``.

Each target is a module of pure functions from the spec to the files it needs (a state
machine and a CloudFormation template for AWS, in :mod:`driftloop.export.aws`), and every
runner runs the same ``driftloop stage ...`` calls the planner makes.
"""
