"""One way to S3: the boto3 clients of sources, outputs and the SQS consumer, and the
options Polars reads an ``s3://`` output with.

Where a client connects is :class:`S3Settings` (the spec's ``storage:`` section: endpoint,
region, profile; never credentials) over boto3's own configuration (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, the credentials' variables and files). A setting the
spec gives wins over the environment's. :func:`client` keeps one client per (service,
settings, AWS environment) and process: creating one costs ~0.1 s, and boto3's clients are
thread-safe. Each has botocore's standard retries and connection timeouts as hang guards.

Outputs are addressed by URL alone (``layout.processed / batch`` is an ``ObjectUrl``), so
the settings of a project's ``outputs:`` root are bound to that root once, when its
:class:`~driftloop.core.layout.Layout` reads the spec (:func:`bind`); every reader and writer
of an address under it finds them with :func:`settings_for`. An address under no bound root
uses the environment alone.

boto3 is imported on first use, never by a project without ``s3://``. Credentials stay in
boto3's chain and in memory: they are never logged, written or put in an error (the secret
is part of a cache key in memory only, so a changed credential gets a new client).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from driftloop.core.errors import StorageError

# botocore's own retries, within one call; the runner retries a call that still fails
RETRIES = {"max_attempts": 3, "mode": "standard"}
CONNECT_TIMEOUT = 10.0  # seconds: a hang guard for an endpoint that accepts and says nothing
READ_TIMEOUT = 60.0

# What boto3 reads from the environment, which picks the client
ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is reached: each field set overrides boto3's own configuration."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None

    @classmethod
    def of(cls, section: object) -> S3Settings:
        """From a spec's ``storage:`` mapping (or None); unknown keys are the spec's to
        refuse, not this reader's."""
        if not isinstance(section, dict):
            return cls()
        values = {k: section.get(k) for k in ("endpoint_url", "region", "profile")}
        return cls(**{k: str(v) for k, v in values.items() if isinstance(v, str) and v})


_clients: dict[tuple[object, ...], Any] = {}
_clients_lock = threading.Lock()
_bound: dict[str, S3Settings] = {}  # an outputs root URL (no trailing /) -> its settings
_bound_lock = threading.Lock()


def require_boto3(what: str = "s3:// storage needs") -> None:
    """boto3 is the ``s3`` extra's: its absence is one line that says how to install it
    (``what`` is the sentence's subject and verb)."""
    try:
        import boto3  # noqa: F401
        import botocore  # noqa: F401
    except ImportError:
        raise StorageError(
            f"{what} boto3, which is not installed; install the S3 extra: "
            "pip install 'driftloop[s3]'"
        ) from None


def client(settings: S3Settings | None = None, service: str = "s3") -> Any:
    """The process's boto3 client for ``service`` with ``settings`` in this AWS environment.
    ``settings.endpoint_url`` is S3's: other services keep the environment's endpoint."""
    settings = settings or S3Settings()
    key = (service, settings, *(os.environ.get(n) for n in ENVIRONMENT))
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            require_boto3()
            import boto3
            from botocore.config import Config

            # a session of its own: boto3's default session caches the credentials it
            # found first, and a profile is a session's
            session = boto3.session.Session(profile_name=settings.profile)
            found = session.client(
                service,  # one factory for s3 and sqs
                endpoint_url=settings.endpoint_url if service == "s3" else None,
                region_name=settings.region,
                config=Config(
                    retries=RETRIES,
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                ),
            )
            _clients[key] = found
    return found


def bind(root: str, settings: S3Settings) -> None:
    """Addresses under ``root`` (an outputs URL) are reached with ``settings``."""
    with _bound_lock:
        _bound[root.rstrip("/")] = settings


def settings_for(url: str) -> S3Settings:
    """The settings bound to the longest root ``url`` lies under, else the environment's."""
    with _bound_lock:
        best = ""
        for root in _bound:
            if (url == root or url.startswith(root + "/")) and len(root) > len(best):
                best = root
        return _bound[best] if best else S3Settings()


def polars_options(url: str) -> dict[str, str] | None:
    """``storage_options`` for Polars to read ``url`` where boto3 would: None (Polars reads
    the AWS environment itself) unless the spec's settings override it. With a profile, its
    credentials are resolved by boto3 and handed over in memory (Polars reads no profiles)."""
    settings = settings_for(url)
    if settings == S3Settings():
        return None
    options: dict[str, str] = {}
    s3 = client(settings)
    endpoint = settings.endpoint_url
    if endpoint:
        options["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            options["aws_allow_http"] = "true"
    region = settings.region or s3.meta.region_name
    if region:
        options["aws_region"] = region
    if settings.profile:
        import boto3

        found = boto3.session.Session(profile_name=settings.profile).get_credentials()
        if found is not None:
            frozen = found.get_frozen_credentials()
            options["aws_access_key_id"] = frozen.access_key
            options["aws_secret_access_key"] = frozen.secret_key
            if frozen.token:
                options["aws_session_token"] = frozen.token
    return options


def endpoint_of(settings: S3Settings) -> str:
    """Where requests go, for messages (a URL holds no credentials here)."""
    from driftloop.core.redact import redact

    try:
        return redact(str(client(settings).meta.endpoint_url))
    except Exception:  # no region, a bad profile: the error says so elsewhere
        return settings.endpoint_url or "the default AWS endpoint"
