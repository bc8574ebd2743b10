"""API tokens: who may call which endpoint of ``driftloop serve``.

Tokens come from the server's environment, never from driftloop.yaml (which is committed)::

    DRIFTLOOP_API_TOKENS="token1:predict+feedback,token2:admin"
    DRIFTLOOP_API_TOKENS_FILE=/path/to/tokens    # the same entries, one per line; # comments

Each token has scopes: ``predict`` (/predict), ``feedback`` (/feedback), ``metrics``
(/metrics) and ``admin`` (every scope, and label corrections on /feedback). /ready and
/model answer any valid token. When tokens are configured, every endpoint but /health needs
one, sent as ``Authorization: Bearer <token>``, on any address; when none are, the API is
open, which ``driftloop serve`` allows only on a loopback address (:func:`check_binding`).

A presented token is compared with every configured one by :func:`hmac.compare_digest`
(constant time, and no early exit on a match), and no token is ever logged or echoed: an
error about a token names its position (entry 2 of DRIFTLOOP_API_TOKENS, line 3 of the
file), never its text. The routes take :func:`require` as a FastAPI dependency built on
:class:`fastapi.security.HTTPBearer`, so the OpenAPI document shows the scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from driftloop.core.errors import DriftloopError
from driftloop.core.spec import did_you_mean

TOKENS_ENV = "DRIFTLOOP_API_TOKENS"
TOKENS_FILE_ENV = "DRIFTLOOP_API_TOKENS_FILE"
SCOPES = ("predict", "feedback", "admin", "metrics")
ADMIN = "admin"
ANY = "any"  # a route any valid token may call (/ready, /model)
MIN_TOKEN_LENGTH = 16
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_MAKE_ONE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenConfigError(DriftloopError):
    """The API tokens in the environment (or their file) cannot be used."""


@dataclass(frozen=True)
class ApiToken:
    secret: bytes
    scopes: frozenset[str]

    @property
    def fingerprint(self) -> str:
        """A short digest that names the token in records (the feedback log) without
        revealing it."""
        return hashlib.sha256(self.secret).hexdigest()[:12]

    def allows(self, scope: str) -> bool:
        return scope == ANY or scope in self.scopes or ADMIN in self.scopes


@dataclass(frozen=True)
class Tokens:
    """The configured tokens; empty means the API is open (loopback only)."""

    tokens: tuple[ApiToken, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def find(self, presented: str) -> ApiToken | None:
        """The configured token equal to ``presented``, compared in constant time with each."""
        given = presented.encode()
        found = None
        for token in self.tokens:  # no early exit: the time does not tell which one matched
            if hmac.compare_digest(token.secret, given):
                found = token
        return found


def parse_tokens(text: str, where: Callable[[int], str]) -> list[ApiToken]:
    """Entries ``token:scope+scope`` separated by commas or newlines (# starts a comment).

    ``where(n)`` names entry ``n`` (1-based) in an error; errors never show a token.
    """
    out: list[ApiToken] = []
    entries = [e.split("#", 1)[0].strip() for line in text.splitlines() for e in line.split(",")]
    for n, entry in enumerate(entries, start=1):
        if not entry:
            continue
        secret, sep, scopes_text = entry.rpartition(":")
        if not sep or not secret:
            raise TokenConfigError(
                f"{where(n)}: expected <token>:<scopes> (scopes joined by '+', from "
                f"{', '.join(SCOPES)}), e.g. <token>:predict+feedback"
            )
        if len(secret) < MIN_TOKEN_LENGTH:
            raise TokenConfigError(
                f"{where(n)}: the token is {len(secret)} characters; tokens need at least "
                f"{MIN_TOKEN_LENGTH} so they cannot be guessed; {_MAKE_ONE}"
            )
        scopes = [s.strip() for s in scopes_text.split("+")]
        for scope in scopes:
            if scope not in SCOPES:
                raise TokenConfigError(
                    f"{where(n)}: unknown scope {scope!r}{did_you_mean(scope, list(SCOPES))}; "
                    f"scopes are {', '.join(SCOPES)}, joined by '+'"
                )
        out.append(ApiToken(secret.encode(), frozenset(scopes)))
    return out


def load_tokens(environ: Mapping[str, str] | None = None) -> Tokens:
    """The tokens named by ``DRIFTLOOP_API_TOKENS`` and ``DRIFTLOOP_API_TOKENS_FILE`` (both
    may be set: their tokens add up)."""
    env = os.environ if environ is None else environ
    tokens: list[ApiToken] = []
    inline = env.get(TOKENS_ENV, "")
    if inline.strip():
        tokens += parse_tokens(inline, lambda n: f"{TOKENS_ENV}, entry {n}")
    file = env.get(TOKENS_FILE_ENV, "").strip()
    if file:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenConfigError(
                f"{TOKENS_FILE_ENV} names {path}, which cannot be read "
                f"({type(exc).__name__}: {exc.args[-1] if exc.args else exc}); point it at a "
                "UTF-8 file of <token>:<scopes> lines"
            ) from None
        found = parse_tokens(text, lambda n: f"{path}, entry {n}")
        if not found:
            raise TokenConfigError(
                f"{TOKENS_FILE_ENV} names {path}, which holds no token; add lines of "
                f"<token>:<scopes>, or unset {TOKENS_FILE_ENV}"
            )
        tokens += found
    return Tokens(tuple(tokens))


def check_binding(host: str, tokens: Tokens) -> None:
    """Refuse an open API on anything but a loopback address."""
    if tokens.enabled or host in LOOPBACK:
        return
    raise TokenConfigError(
        f"refusing to serve on {host} without API tokens: any machine that reaches it could "
        f"predict and send labels. Set {TOKENS_ENV}='<token>:predict+feedback,<token>:admin' "
        f"(or {TOKENS_FILE_ENV}=<file of such lines>; {_MAKE_ONE}), or bind 127.0.0.1 "
        "(serving.host or --host)"
    )


bearer = HTTPBearer(
    auto_error=False,
    description="An API token from DRIFTLOOP_API_TOKENS (needed when tokens are configured)",
)


async def configured_tokens(request: Request) -> Tokens:
    """The app's tokens (a dependency, so tests can override it). ``async`` because it does
    no I/O: FastAPI runs a plain ``def`` dependency in its thread pool, a hand-off to another
    thread and back that cost more than the rest of a keep-alive /predict."""
    tokens: Tokens = request.app.state.tokens
    return tokens


def require(scope: str) -> Any:
    """A dependency that lets a request through with a token allowing ``scope``; it returns
    that token (None when the API is open)."""

    async def check(  # async: no thread-pool hop (see configured_tokens); no I/O here
        tokens: Annotated[Tokens, Depends(configured_tokens)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiToken | None:
        if not tokens.enabled:
            return None
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise HTTPException(
                401,
                "this endpoint needs an API token: send 'Authorization: Bearer <token>' with a "
                f"token from {TOKENS_ENV}",
                headers=challenge,
            )
        token = tokens.find(credentials.credentials)
        if token is None:
            raise HTTPException(
                401,
                f"the bearer token is not one of the server's API tokens ({TOKENS_ENV}); "
                "check for a typo or ask for a token",
                headers=challenge,
            )
        if not token.allows(scope):
            raise HTTPException(
                403,
                f"this token's scopes ({'+'.join(sorted(token.scopes))}) do not include "
                f"{scope!r}, which this endpoint needs; use a token with {scope!r} or 'admin'",
            )
        return token

    return check
