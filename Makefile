# driftloop — the README names these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: prefect-venv test-prefect airflow-venv test-airflow demo test lint typecheck unit slow run-all bench-prep bench-drift bench-serve bench-replay bench-latency bench-history bench-s3 reliability clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Prefect and Dask (the prefect extra) in a venv of their own: Prefect 3.9 needs FastAPI
# below 0.151, older than the one .venv has. .venv-prefect sees .venv's packages (a .pth
# after its own) and holds only what the extra adds or needs older, so .venv is untouched.
PREFECT_VENV := .venv-prefect
PREFECT_STAMP := $(PREFECT_VENV)/.installed-prefect
$(PREFECT_STAMP): $(STAMP) pyproject.toml
	test -x $(PREFECT_VENV)/bin/python || $(PYTHON) -m venv $(PREFECT_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
	  "$$($(PREFECT_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-driftloop-venv.pth"
	$(PREFECT_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(PREFECT_VENV)/bin/python -m pip install --quiet 'prefect>=3' 'prefect-dask>=0.3' 'dask[distributed]>=2024.8'
	$(PREFECT_VENV)/bin/python -m pip check
	touch $(PREFECT_STAMP)

prefect-venv: $(PREFECT_STAMP)

## make test-prefect: the tests under a real Prefect server and a Dask LocalCluster
test-prefect: $(PREFECT_STAMP)
	$(PREFECT_VENV)/bin/python -m mypy  # with Prefect's own types, which .venv does not have
	OMP_NUM_THREADS=1 $(PREFECT_VENV)/bin/python -m pytest -n 0 -m prefect

# Airflow 3 in a venv of its own: it pins an older FastAPI (and more) than .venv's serving
# side. Unlike .venv-prefect it does not see .venv at all: the generated DAG's tasks run
# .venv's driftloop command as a subprocess, so Airflow never imports driftloop. One
# version, pinned (Airflow's constraint files are not on a package index); the Amazon
# provider with aiobotocore for the SQS watcher.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_VERSION := 3.3.2
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-airflow-$(AIRFLOW_VERSION)
$(AIRFLOW_STAMP):
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet 'apache-airflow==$(AIRFLOW_VERSION)' \
	  'apache-airflow-providers-amazon[aiobotocore]'
	$(AIRFLOW_VENV)/bin/python -m pip check
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

## make test-airflow: the generated DAG under Airflow 3 (airflow dags test, airflow standalone)
test-airflow: $(STAMP) $(AIRFLOW_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 0 -m airflow

## make demo: set everything up and run the lifecycle on built-in data (./demo)
demo: $(STAMP)
	$(BIN)/driftloop demo --project demo

## make test: lint, format check, type check, and the whole test suite (slow tests included;
## the Prefect tests last, in .venv-prefect, then the Airflow ones, with .venv-airflow)
test: $(STAMP) lint typecheck
	# two test workers on two cores: one OpenMP thread each, or they oversubscribe and crawl
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -m "not prefect and not airflow"
	$(MAKE) test-prefect
	$(MAKE) test-airflow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## quick feedback: everything but the slow end-to-end tests
unit: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow and not prefect and not airflow"

slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "slow and not prefect and not airflow"

## make run-all PROJECT=path: one full pass over what is in data/raw (same as driftloop run)
PROJECT ?= .
run-all: $(STAMP)
	$(BIN)/driftloop run --project $(PROJECT)

bench-prep: $(STAMP)
	$(BIN)/python benchmarks/prep.py

## evidently's DataDriftPreset vs driftloop's monitor (creates benchmarks/.data/evidently-venv)
bench-drift: $(STAMP)
	$(BIN)/python benchmarks/drift.py

## needs wrk (Debian package) for the load
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve.py

bench-replay: $(STAMP)
	$(BIN)/python benchmarks/replay.py

bench-latency: $(STAMP)
	$(BIN)/python benchmarks/latency.py

## a no-op pass and a one-new-batch pass at 100, 1,000 and 10,000 batches of history
bench-history: $(STAMP)
	$(BIN)/python benchmarks/history.py

## S3 (a moto server it starts) vs the local disk: prep throughput and event-to-deploy latency
## (ARGS="--rows 200000 --runs 2" for a smaller run)
bench-s3: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/s3.py $(ARGS)

## the reliability probe: kill -9, fuzzed files, schemathesis, swaps, a soak, a secret sweep
## (ARGS="--quick" for a smoke run; schemathesis goes in benchmarks/.venv-schemathesis)
reliability: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/reliability.py $(ARGS)

clean:
	rm -rf $(VENV) $(PREFECT_VENV) $(AIRFLOW_VENV) demo .pytest_cache .mypy_cache .ruff_cache
