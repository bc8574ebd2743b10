# driftloop: one image for every role.
#   driftloop serve / watch / up / stage <name> / prefect serve   (ENTRYPOINT is driftloop)
#   dask scheduler / dask worker                                 (--entrypoint dask)
#   mlflow server                           (built with EXTRAS including mlflow-server)
# Build:  docker build -t driftloop .   (or podman build, or buildah build --format docker)
# BASE must have python3 (3.11 or later) with venv; both stages use it, so the venv's
# interpreter link points at the same python in the runtime stage.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# s3: sources/outputs/notifications on S3; postgres: the state database on PostgreSQL;
# prefect: the Prefect flow and Dask (dask worker, dask scheduler). Add mlflow-server for an
# image that also runs the tracking server (the full mlflow package).
ARG EXTRAS=s3,postgres,prefect
# Behind a proxy that re-signs TLS, pip needs that CA: mount the bundle and name it here
# (buildah/podman build --volume /etc/ssl/certs/ca-certificates.crt:/etc/build-ca.crt:ro
#  --build-arg PIP_CERT=/etc/build-ca.crt). Unset, pip and uv use their own CA bundles.
ARG PIP_CERT
# uv resolves and installs (pip's resolver backtracks for many minutes over s3fs' and
# prefect's pins); it lives in a venv of its own in this stage only
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
RUN if [ -z "${PIP_CERT:-}" ]; then unset PIP_CERT; fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
    && python3 -m venv --without-pip /opt/driftloop
COPY pyproject.toml README.md ./
COPY requirements/image.lock ./requirements/
COPY src ./src
# a wheel is built from the sources (hatchling, in an isolated build environment) and
# installed with the extras' dependencies into the venv; the sources stay in this stage.
# The lock (make lock) pins every version the tests passed with: a constraint, so extras it
# does not cover (mlflow-server) still resolve. SSL_CERT_FILE: uv's name for PIP_CERT's CA.
# --compile-bytecode: the runtime sets PYTHONDONTWRITEBYTECODE, so without .pyc files every
# process (each `driftloop stage` task) would compile its imports from source again.
RUN if [ -n "${PIP_CERT:-}" ]; then export SSL_CERT_FILE="$PIP_CERT"; fi \
    && /opt/uv/bin/uv pip install --compile-bytecode --python /opt/driftloop/bin/python \
       --constraint requirements/image.lock ".[${EXTRAS}]" \
    && /opt/uv/bin/uv pip check --python /opt/driftloop/bin/python \
    && /opt/driftloop/bin/driftloop --version

FROM ${BASE} AS runtime
# a fixed uid, so a mounted project folder can be given to it (chown 10001)
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/driftloop \
    --shell /usr/sbin/nologin driftloop \
    && mkdir -p /project \
    && chown driftloop:driftloop /project
COPY --from=build /opt/driftloop /opt/driftloop
# OMP_NUM_THREADS: OpenMP (scikit-learn, treelite) sizes its pool by the host's cores, not
# the container's CPU limit, and serving runs several processes: one thread each unless a
# role says otherwise (a training container with 4 CPUs: -e OMP_NUM_THREADS=4).
# Polars reads the CPU limit itself; a Dask worker sets POLARS_MAX_THREADS to its --nthreads.
# GIT_PYTHON_REFRESH: the image has no git; MLflow's look for one would print a page per run.
ENV PATH=/opt/driftloop/bin:$PATH \
    OMP_NUM_THREADS=1 \
    GIT_PYTHON_REFRESH=quiet \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# numeric, so a runtime can tell it is not root (Kubernetes runAsNonRoot)
USER 10001:10001
WORKDIR /project
EXPOSE 8000
# driftloop serve answers /health without a token; the other roles serve no HTTP: compose
# turns the check off for them (healthcheck: disable: true). DRIFTLOOP_HEALTH_URL moves it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('DRIFTLOOP_HEALTH_URL', 'http://127.0.0.1:8000/health'), timeout=4)"]
ENTRYPOINT ["driftloop"]
CMD ["serve", "--host", "0.0.0.0"]
