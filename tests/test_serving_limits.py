"""serving.limits against a real ``driftloop serve`` (uvicorn) on a free port, over raw
sockets: oversized headers, too many headers, slowloris headers and a slow body.

Every wait is a hang guard (a socket timeout far above the limits), never a speed claim: a
test waits for the server to answer or close.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from driftloop.core.errors import SpecError
from driftloop.core.spec import HttpLimitsSpec, load_spec
from driftloop.serving.limits import LIMITS_ENV, uvicorn_settings

from .helpers import write_spec
from .serving_helpers import SERVING, Running, record, serving, synthetic_project
from .test_lifecycle import SPEC

# the tests share the module's trained project and server: one worker builds them
pytestmark = pytest.mark.xdist_group("serving_limits")

HANG_GUARD = 120.0  # seconds; the limits below are 1-2 s
LIMITS = SERVING + (
    "  limits: {max_header_bytes: 4096, max_headers: 20, header_timeout_seconds: 1,"
    " body_timeout_seconds: 2, keep_alive_seconds: 1, max_connections: 50}\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    project = synthetic_project(tmp_path_factory.mktemp("limits"), versions=1, extra=LIMITS)
    with serving(project) as running:
        yield running


def connect(server: Running) -> socket.socket:
    where = urlsplit(server.url)
    sock = socket.create_connection((where.hostname, where.port), timeout=HANG_GUARD)
    return sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def send_all(sock: socket.socket, data: bytes) -> None:
    # the server may close on the part it refuses: what a limit should do
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def test_an_oversized_header_is_431_and_closed(server: Running) -> None:
    with connect(server) as sock:
        send_all(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"serving.limits.max_header_bytes" in answer


def test_too_many_headers_are_431(server: Running) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    with connect(server) as sock:
        send_all(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"serving.limits.max_headers" in answer


@pytest.mark.parametrize(
    "sent", [b"", b"GET /health HTTP/1.1\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b"]
)
def test_slowloris_headers_are_closed(server: Running, sent: bytes) -> None:
    with connect(server) as sock:
        send_all(sock, sent)  # and then nothing more, ever
        answer = until_closed(sock)  # returns only once the server closes
    if sent:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"serving.limits.header_timeout_seconds" in answer


def test_a_slow_body_is_closed(server: Running) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with connect(server) as sock:
        send_all(sock, head + b'{"x1": 0.5,')  # 11 of 1000 bytes, then nothing
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"serving.limits.body_timeout_seconds" in answer


def test_requests_within_the_limits_are_served(server: Running) -> None:
    with server.client() as client:
        big_enough = {"X-Trace": "t" * 2000}
        assert client.get("/health", headers=big_enough).status_code == 200
        answer = client.post("/predict", json=record())  # kept alive between requests
        assert answer.status_code == 200, answer.text
        assert client.post("/predict", json=[record()] * 50).status_code == 200


def test_uvicorn_gets_its_own_settings_and_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LIMITS_ENV, raising=False)
    limits = HttpLimitsSpec(max_connections=7, keep_alive_seconds=3)
    settings = uvicorn_settings(limits)
    assert settings["limit_concurrency"] == 7 and settings["timeout_keep_alive"] == 3
    assert settings["http"] == "driftloop.serving.limits:BoundedHttpToolsProtocol"
    assert HttpLimitsSpec.model_validate_json(os.environ[LIMITS_ENV]) == limits


def test_the_limits_live_in_the_spec(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + "serving:\n  limits: {max_header_bytes: 10}\n")
    with pytest.raises(SpecError, match=r"max_header_bytes"):
        load_spec(tmp_path)
