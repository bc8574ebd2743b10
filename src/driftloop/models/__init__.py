"""A model version as driftloop keeps it: the self-contained package, the machine's cache,
the compiled inference path, the reference profile, metrics, and the registry (the
``Registry`` protocol, MLflow's implementation and the in-memory one for tests).
"""
