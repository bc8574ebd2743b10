"""Storage URLs: which scheme a source or an output names, and the error for one without a
store. Sources and outputs are addressed by URL; a plain path is a ``file`` URL.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from driftloop.core.errors import StorageSchemeError

# Schemes with a store on the way, and where it arrives.
PLANNED: dict[str, str] = {}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str) -> str:
    """The scheme of a URL, lower case; ``file`` for a plain path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "file"


def no_store(url: str, known: Iterable[str], owner: str | None = None) -> StorageSchemeError:
    """The error for a URL whose scheme has no store; ``owner`` names who gave the URL."""
    scheme = url_scheme(url)
    where = f"{owner} (path {url!r})" if owner else repr(url)
    if scheme in PLANNED:
        return StorageSchemeError(
            f"{where}: {scheme}:// storage is not supported yet: {PLANNED[scheme]}; until "
            "then, copy the files into a folder on this machine and point the path at it"
        )
    close = difflib.get_close_matches(scheme, [*known, *PLANNED], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}://?" if close else ""
    return StorageSchemeError(
        f"{where}: unknown storage scheme {scheme!r}{hint}; use a path on this machine "
        "(relative to the project, absolute, or file://...)"
    )


class ObjectUrl(str):
    """An object store's address (``s3://bucket/prefix``) that joins like a path, so that
    code written for a project folder (``layout.processed / batch_id``) reads the same for
    outputs on a bucket: ``ObjectUrl("s3://b/p") / "x"`` is ``s3://b/p/x``."""

    __slots__ = ()

    def __truediv__(self, name: str) -> ObjectUrl:
        return ObjectUrl(f"{self.rstrip('/')}/{str(name).strip('/')}")

    @property
    def name(self) -> str:
        """The last part of the address (``x`` for ``s3://b/p/x``)."""
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectUrl:
        head, _, tail = self.rstrip("/").rpartition("/")
        if head.endswith(":/") or not tail:  # the bucket itself has no parent in the store
            return self
        return ObjectUrl(head)

    @property
    def bucket(self) -> str:
        return self.partition("://")[2].partition("/")[0]

    @property
    def key(self) -> str:
        """The key (prefix) within the bucket, without slashes at either end."""
        return self.partition("://")[2].partition("/")[2].strip("/")
