"""Bounds on what one connection may cost a worker (``serving.limits``).

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the number of
connections and tasks per worker (``limit_concurrency``: a request beyond it gets 503); its
fast parser (httptools) has no bound on header size or count and no timeout for a client
that sends its headers or body slowly, so four 200 MB headers were buffered and 300
slowloris connections stayed open for good. :class:`BoundedHttpToolsProtocol` is uvicorn's
httptools protocol with those bounds added:

- headers: the request line and the header names and values may hold at most
  ``max_header_bytes`` bytes in ``max_headers`` headers; beyond, 431 and the connection is
  closed (counted while parsing, so an oversized header is never buffered whole);
- header time: a connection must finish a request's headers within
  ``header_timeout_seconds`` of connecting (or of the request's first byte, on a kept-alive
  connection); body time: the body must arrive within ``body_timeout_seconds`` of the
  headers. Otherwise 408, when no response has started, and the connection is closed.

The limits reach each worker process through the environment (:data:`LIMITS_ENV`, set by
``driftloop serve``), since uvicorn imports the protocol class by name in each worker.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from driftloop.core.spec import HttpLimitsSpec

LIMITS_ENV = "DRIFTLOOP_SERVE_HTTP_LIMITS"
PROTOCOL = "driftloop.serving.limits:BoundedHttpToolsProtocol"
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def limits_from_environment() -> HttpLimitsSpec:
    text = os.environ.get(LIMITS_ENV)
    return HttpLimitsSpec.model_validate(json.loads(text)) if text else HttpLimitsSpec()


class _HeadersTooLargeError(Exception):
    """Raised from a parser callback: httptools stops parsing and reports an error."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on header size, count and read time, and on
    body read time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits_from_environment()
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._too_slow, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self._answer(408, f"{what}; the connection is closed")
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        self.transport.close()

    # -- the connection and the parser's callbacks ----------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._limits.header_timeout_seconds, self._header_time())

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._header_count = 0
        if self._timer is None:  # a kept-alive connection's next request
            self._arm(self._limits.header_timeout_seconds, self._header_time())

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self._expects_body():
            limit = self._limits.body_timeout_seconds
            self._arm(
                limit,
                f"the request body did not arrive within {limit:g} s "
                "(serving.limits.body_timeout_seconds)",
            )

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        status, text = self._refusal
        self._answer(status, text)
        self.transport.close()

    # -- helpers ---------------------------------------------------------------------------

    def _count(self, size: int, headers: int) -> None:
        self._header_bytes += size
        self._header_count += headers
        limits = self._limits
        if self._header_bytes > limits.max_header_bytes:
            self._refusal = (
                431,
                f"the request line and headers are over {limits.max_header_bytes} bytes "
                "(serving.limits.max_header_bytes); send smaller headers",
            )
        elif self._header_count > limits.max_headers:
            self._refusal = (
                431,
                f"more than {limits.max_headers} headers (serving.limits.max_headers); send fewer",
            )
        if self._refusal is not None:
            self._disarm()
            raise _HeadersTooLargeError

    def _expects_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False

    def _header_time(self) -> str:
        limit = self._limits.header_timeout_seconds
        return (
            f"the request line and headers did not arrive within {limit:g} s "
            "(serving.limits.header_timeout_seconds)"
        )

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )


def uvicorn_settings(limits: HttpLimitsSpec) -> dict[str, Any]:
    """uvicorn's own settings for the limits it has, and the bounded protocol."""
    os.environ[LIMITS_ENV] = limits.model_dump_json()
    return {
        "http": PROTOCOL,
        "limit_concurrency": limits.max_connections,
        "timeout_keep_alive": limits.keep_alive_seconds,
    }
