"""What driftloop writes for other tools from a project's ``driftloop.yaml``.

Each target is a module of pure functions from the spec to the files it needs (a CI workflow
for GitHub Actions or Azure Pipelines in :mod:`driftloop.export.ci`).
"""
