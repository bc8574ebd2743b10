"""Request ids that cannot be guessed, and that any worker can check it issued.

/predict answers each request with an id ``<random>.<records>.<mac>``: 128 random bits
(:func:`secrets.token_urlsafe`), the number of records the request held, and an HMAC-SHA256
of both under the project's serving key. /feedback accepts a label only for an id whose MAC
checks and a record below that count, so a label cannot name a prediction that was never
made, and ids cannot be enumerated. Checking needs no shared state between workers (nor a
read of the prediction log, which is flushed in the background): every worker of a project
reads the same key, ``.driftloop/serving.key`` (created on first use, readable by its owner
only), so ids stay valid across workers and restarts. Deleting the key invalidates every id
issued so far: feedback for them is then refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from driftloop.core.errors import ProjectError

KEY_FILE = "serving.key"
_MAC_CHARS = 22  # of the hex digest: 88 bits
_RANDOM_BYTES = 16  # 128 bits per id


class RequestIds:
    """Issues and checks request ids under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._random = b""  # os.urandom read ahead: one call per 256 ids, not one per id
        self._lock = threading.Lock()

    @classmethod
    def for_project(cls, state_dir: Path) -> RequestIds:
        return cls(read_or_create_key(state_dir / KEY_FILE))

    def issue(self, records: int) -> str:
        body = f"{self._token()}.{records}"
        return f"{body}.{self._mac(body)}"

    def records(self, request_id: str) -> int | None:
        """How many records the request held, or None when this key did not issue the id."""
        body, dot, mac = request_id.rpartition(".")
        count = body.rpartition(".")[2]
        if not dot or not count.isdigit() or not count.isascii():
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        return int(count)

    def _token(self) -> str:
        """128 random bits from the OS's CSPRNG, as :func:`secrets.token_urlsafe` gives them
        (read 4 KiB at a time: a getrandom call cost more than the rest of issuing an id)."""
        with self._lock:
            if len(self._random) < _RANDOM_BYTES:
                self._random = os.urandom(_RANDOM_BYTES * 256)
            chunk, self._random = (
                self._random[:_RANDOM_BYTES],
                self._random[_RANDOM_BYTES:],
            )
        return base64.urlsafe_b64encode(chunk).rstrip(b"=").decode("ascii")

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:_MAC_CHARS]


def read_or_create_key(path: Path) -> bytes:
    """The key in ``path``; a new random one when there is none (workers starting together
    agree: the first to link its file wins, the others read that one)."""
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # fails if another worker got there first: use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if len(text) < 32:
        raise ProjectError(
            f"{path}: the serving key is {len(text)} characters, expected 64 hex digits; "
            "delete the file and restart driftloop serve (ids issued so far become invalid)"
        )
    return text.encode()
