"""What ``driftloop export`` writes: the project's lifecycle in another runner's own terms,
generated from ``driftloop.yaml`` (an Airflow DAG: :mod:`driftloop.export.airflow`).

Every generated file runs the same idempotent per-stage entry points (``driftloop stage
...``) that the built-in loop and the Prefect flow run, so the runner only decides when and
where a call runs, never what it does.
"""
