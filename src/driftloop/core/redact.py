"""Credentials out of everything driftloop shows or stores: the one home for redaction.

A URI may carry a password (``http://user:password@host`` for MLflow, ``postgresql://...``
for the state database, an S3 endpoint), and third-party errors quote the URI they failed
on (MLflow: "API request to http://user:password@host/api/... failed"). :func:`redact`
rewrites any text so that such secrets read ``***``:

- the password of a URI's user information, anywhere in the text
  (``scheme://user:***@host``; the user name stays, as SQLAlchemy shows it);
- secret query parameters (``?password=``, ``token=``, ``X-Amz-Signature=``,
  ``X-Amz-Credential=``, ``X-Amz-Security-Token=``, ...) and libpq's ``password=...``.

It is applied where text leaves the process: the CLI's stdout and stderr (:class:`Redacting`,
which logs and tracebacks go through too), the state database's free-text columns and event
payloads, and the HTTP API's answers; errors that quote a registry URI are built redacted.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

MASK = "***"
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"<>]*):(?P<secret>[^/\s'\"<>]*)@"
)
_QUERY = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|"
    r"signature|x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid)=)"
    r"(?P<secret>[^&\s'\"#<>]+)"
)
_CONNINFO = re.compile(r"(?i)(?P<head>(?<![?&;\w])password\s*=\s*)(?P<secret>'[^']*'|[^\s'\"&]+)")


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it (and libpq passwords) masked."""
    if "@" not in text and "=" not in text:  # the common case costs one scan
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
    return _CONNINFO.sub(lambda m: f"{m['head']}{MASK}", text)


def has_password(url: str) -> bool:
    """Whether a URI's user information holds a password."""
    return redact(url) != url


def redact_value(value: Any) -> Any:
    """Strings anywhere in a JSON-like value (dicts, lists) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


class Redacting:
    """A text stream that redacts what is written to it (the CLI's stdout and stderr).

    A secret is masked when one ``write`` holds it whole, which is how print, rich, logging,
    json and tracebacks write a line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def redact_standard_streams() -> None:
    """Route this process's stdout and stderr through :class:`Redacting` (once)."""
    if not isinstance(sys.stdout, Redacting):
        sys.stdout = Redacting(sys.stdout)
    if not isinstance(sys.stderr, Redacting):
        sys.stderr = Redacting(sys.stderr)
