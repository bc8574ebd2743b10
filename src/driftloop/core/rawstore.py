"""Where raw files land, by URL: a small protocol, the local folder, and an in-memory store.

A source's ``path`` is a URL or a plain path. Its scheme picks the store once, at the edge
(:func:`raw_store`): a plain path or ``file://`` is :class:`LocalRawStore`; ``s3://`` is
:class:`driftloop.core.s3store.S3RawStore` (boto3, imported only when an ``s3://`` store is
used). Stages see only the protocol:

- :meth:`RawStore.list` the objects a glob matches, each with its identity
  (:class:`RawObject`: key, size, modification time, and a version or ETag where the backend
  has one), so a pass knows what is new without reading any content;
- :meth:`RawStore.stat` one object's identity now (to see it did not change);
- :meth:`RawStore.open` / :meth:`RawStore.sha256` its content, hashed while it is read;
- :meth:`RawStore.local_path` a path Polars and pyarrow can read, where the store has one;
- :meth:`RawStore.watch` arrival notifications (inotify and friends locally; an S3 store
  would consume bucket notifications from a queue).

An object's key is what the ingest ledger records: on a local disk the path relative to the
project when it is inside it, else the absolute path; on an object store, its URL. So a
ledger entry names its store by itself (:func:`raw_store` of the key).

:class:`MemoryRawStore` is shipped for tests, as ``httpx.MockTransport`` is: it has versions
and no local paths, like an object store. ``tests/test_storage.py`` runs one contract over
every store.
"""

from __future__ import annotations

import builtins
import fnmatch
import functools
import glob
import hashlib
import io
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from driftloop.core.layout import Layout
from driftloop.core.urls import no_store, url_scheme

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class RawObject(NamedTuple):
    """One raw object and its identity: if any of these changes, the content may have.
    (A named tuple: a listing makes 10,000s of them, at half a frozen dataclass's cost.)"""

    key: str
    size: int
    mtime_ns: int  # last modification (an object store's LastModified)
    version: str | None = None  # version id or ETag where the backend has one

    @property
    def mtime(self) -> float:
        """The modification time in seconds since the epoch."""
        return self.mtime_ns / 1e9

    @property
    def seen(self) -> tuple[int, int]:
        """(size, mtime_ns): what ``driftloop watch`` remembers of a file it saw finished."""
        return (self.size, self.mtime_ns)


# Called from a notifier's thread: with the object when the backend knows it is complete
# (closed after writing, renamed into place, an object store's put), with None for any other
# change (a hint that a pass should look).
OnChange = Callable[[RawObject | None], None]


class Subscription(Protocol):
    def stop(self) -> None: ...


@runtime_checkable
class RawStore(Protocol):
    """Where one source's raw objects are found, read and watched."""

    scheme: str

    def list(self, pattern: str) -> list[RawObject]:
        """Objects (not folders) matching a glob (``**`` recurses), sorted by key."""
        ...

    def keys(self, pattern: str) -> builtins.list[str]:
        """The keys :meth:`list` gives, without their identity (where the backend can name
        objects without a look at each: a folder of 10,000 files is one directory read)."""
        ...

    def stat(self, key: str) -> RawObject:
        """The object's identity now; :class:`FileNotFoundError` when it is gone."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object's content, to read."""
        ...

    def sha256(self, key: str) -> str:
        """The SHA-256 of the content, computed while reading it."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A path on this machine that holds the object, where the store has one."""
        ...

    def watch(self, prefix: str, on_change: OnChange) -> Subscription:
        """Call ``on_change`` for changes under ``prefix``; raises when the backend cannot
        notify (the caller then polls)."""
        ...


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := stream.read(CHUNK):
        digest.update(block)
    return digest.hexdigest()


class LocalRawStore:
    """Raw files in folders of this machine; keys are paths relative to ``root`` when
    inside it, else absolute (exactly what the ledger has always recorded)."""

    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """The file a key (or a pattern, or a ``file://`` URL) names."""
        if key.startswith("file:"):
            key = unquote(urlparse(key).path)
        return self.root / key

    def key(self, path: Path) -> str:
        return Layout(self.root).relative(path)

    def list(self, pattern: str) -> list[RawObject]:
        folder, _, name = pattern.replace(os.sep, "/").rpartition("/")
        if folder and not glob.has_magic(folder) and not name.startswith("."):
            return self._list_folder(folder, name)
        found = glob.glob(str(self.path(pattern)), recursive=True)  # noqa: PTH207 - a glob pattern with **, relative or absolute
        objects: dict[str, RawObject] = {}
        for path in sorted(Path(p) for p in found):
            try:
                obj = self._stat(path)
            except OSError:  # removed between the listing and now, or not a file
                continue
            objects.setdefault(obj.key, obj)
        return list(objects.values())

    def keys(self, pattern: str) -> builtins.list[str]:
        folder, _, name = pattern.replace(os.sep, "/").rpartition("/")
        if not (folder and not glob.has_magic(folder) and not name.startswith(".")):
            return [o.key for o in self.list(pattern)]
        prefix = self._prefix(folder)
        try:
            entries = list(os.scandir(self.path(folder)))
        except OSError:
            return []
        matches = _name_matcher(name)
        found = []
        for entry in entries:
            if entry.name.startswith(".") or not matches(entry.name):
                continue
            try:
                regular = entry.is_file()  # the directory's own entry type: no stat
            except OSError:
                continue
            if regular:
                key = prefix + entry.name if prefix is not None else self.key(Path(entry.path))
                found.append(key.removeprefix("./"))
        return sorted(found)

    def _prefix(self, folder: str) -> str | None:
        """The key prefix of a plain folder's files, when the folder is inside the root."""
        root = self.root.absolute()
        absolute = self.path(folder).absolute()
        inside = absolute.is_relative_to(root) and ".." not in Path(folder).parts
        return f"{absolute.relative_to(root).as_posix()}/" if inside else None

    def _list_folder(
        self, folder: str, name: str, known: Mapping[str, tuple[int, int]] | None = None
    ) -> builtins.list[RawObject]:
        """A pattern whose folder part is plain (``data/raw/s/*.csv``): one ``scandir`` of
        that folder, with no path object per file (a source may hold 10,000s of files).
        The identity (size, mtime_ns) of a key in ``known`` is taken from there, not from a
        ``stat``."""
        prefix = self._prefix(folder)
        try:
            entries = list(os.scandir(self.path(folder)))
        except OSError:  # no such folder (yet)
            return []
        found = []
        matches = _name_matcher(name)
        for entry in entries:
            if entry.name.startswith(".") or not matches(entry.name):
                continue
            key = prefix + entry.name if prefix is not None else self.key(Path(entry.path))
            key = key.removeprefix("./")
            seen = known.get(key) if known is not None else None
            try:
                if seen is not None:
                    if entry.is_file():  # the directory's own entry type: no stat
                        found.append(RawObject(key, *seen))
                    continue
                st = entry.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(RawObject(key, st.st_size, st.st_mtime_ns))
        found.sort()  # by key (keys are unique: the tuples' order is the keys')
        return found

    def list_trusting(
        self, pattern: str, known: Mapping[str, tuple[int, int]]
    ) -> builtins.list[RawObject]:
        """:meth:`list`, taking the identity (size, mtime_ns) of the keys in ``known`` from
        there instead of a ``stat`` each: one directory read names the files, and only the
        others (new ones) are looked at. The caller vouches for ``known`` (the ledger's
        record, checked against the disk on a recheck: see orchestration/settled.py)."""
        folder, _, name = pattern.replace(os.sep, "/").rpartition("/")
        if not (folder and not glob.has_magic(folder) and not name.startswith(".")):
            return self.list(pattern)
        return self._list_folder(folder, name, known)

    def stat(self, key: str) -> RawObject:
        return self._stat(self.path(key))

    def _stat(self, path: Path) -> RawObject:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "not a file", str(path))
        return RawObject(self.key(path), st.st_size, st.st_mtime_ns)

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def sha256(self, key: str) -> str:
        with self.open(key) as fh:
            return sha256_of(fh)

    def local_path(self, key: str) -> Path:
        return self.path(key)

    def watch(self, prefix: str, on_change: OnChange) -> Subscription:
        """OS notifications (watchdog) for everything under the folder ``prefix``."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        store = self

        class _Changed(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                obj = None
                if event.event_type in ("closed", "moved") and not event.is_directory:
                    path = event.dest_path if event.event_type == "moved" else event.src_path
                    try:
                        obj = store._stat(Path(os.fsdecode(path)))
                    except OSError:
                        obj = None
                on_change(obj)

        observer = Observer()
        observer.schedule(_Changed(), str(self.path(prefix)), recursive=True)
        observer.start()
        return _Observed(observer)


class _Observed:
    def __init__(self, observer: object) -> None:
        self._observer = observer

    def stop(self) -> None:
        self._observer.stop()  # type: ignore[attr-defined]  # watchdog is untyped
        self._observer.join(5)  # type: ignore[attr-defined]


class MemoryRawStore:
    """Objects held in memory, for tests: versioned and without local paths, like S3."""

    scheme = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, RawObject]] = {}
        self._watchers: list[tuple[str, OnChange]] = []
        self._lock = threading.Lock()
        self._versions = 0

    def put(self, key: str, data: bytes, *, mtime_ns: int | None = None) -> RawObject:
        """Store an object whole (a put is atomic: it is complete when it is visible)."""
        with self._lock:
            self._versions += 1
            obj = RawObject(key, len(data), mtime_ns or self._versions, str(self._versions))
            self._objects[key] = (data, obj)
            watchers = [cb for prefix, cb in self._watchers if key.startswith(prefix)]
        for callback in watchers:
            callback(obj)
        return obj

    def delete(self, key: str) -> None:
        with self._lock:
            del self._objects[key]

    def list(self, pattern: str) -> list[RawObject]:
        matches = glob_regex(pattern).fullmatch
        with self._lock:
            return sorted((o for _, o in self._objects.values() if matches(o.key)), key=_key)

    def keys(self, pattern: str) -> builtins.list[str]:
        return [o.key for o in self.list(pattern)]

    def stat(self, key: str) -> RawObject:
        with self._lock:
            if key not in self._objects:
                raise FileNotFoundError(2, "no such object", key)
            return self._objects[key][1]

    def open(self, key: str) -> BinaryIO:
        self.stat(key)
        with self._lock:
            return io.BytesIO(self._objects[key][0])

    def sha256(self, key: str) -> str:
        with self.open(key) as fh:
            return sha256_of(fh)

    def local_path(self, key: str) -> Path | None:
        return None

    def watch(self, prefix: str, on_change: OnChange) -> Subscription:
        entry = (prefix, on_change)
        with self._lock:
            self._watchers.append(entry)
        return _Unwatch(self._watchers, entry, self._lock)


class _Unwatch:
    def __init__(
        self,
        watchers: list[tuple[str, OnChange]],
        entry: tuple[str, OnChange],
        lock: threading.Lock,
    ) -> None:
        self._watchers, self._entry, self._lock = watchers, entry, lock

    def stop(self) -> None:
        with self._lock:
            if self._entry in self._watchers:
                self._watchers.remove(self._entry)


def _key(obj: RawObject) -> str:
    return obj.key


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression over keys: ``*`` and ``?`` stay within one ``/``
    segment, ``**/`` spans any number of them, ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            out.append("[^" + re.escape(body[1:]) + "]" if body[0] == "!" else f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _s3(root: Path, **storage: str | None) -> RawStore:
    from driftloop.core.s3store import S3RawStore  # boto3 only when an s3:// store is used

    return S3RawStore(root, **storage)


def _local(root: Path, **storage: str | None) -> RawStore:
    return LocalRawStore(root)  # the spec's storage section is for object stores


# The registry of stores by URL scheme. A store takes the project folder (local keys are
# relative to it) and the spec's ``storage`` settings as keywords (endpoint_url, region,
# profile; each None when unset). A new store is registered here and tested by
# tests/test_storage.py.
RAW_STORES: dict[str, Callable[..., RawStore]] = {"file": _local, "s3": _s3}


@functools.lru_cache(maxsize=64)
def _name_matcher(pattern: str) -> Callable[[str], object]:
    """``fnmatch.fnmatchcase`` for one pattern, compiled once (called for 10,000s of names)."""
    return re.compile(fnmatch.translate(pattern)).match


def raw_store(
    url: str,
    root: Path,
    *,
    what: str | None = None,
    storage: Mapping[str, str | None] | None = None,
) -> RawStore:
    """The store for a URL (a source's path, or a ledger key), chosen by its scheme.

    ``what`` names the URL's owner in the error (``source 'orders'``); ``storage``: the
    spec's ``storage`` settings (:meth:`driftloop.core.spec.StorageSpec.settings`).
    """
    factory = RAW_STORES.get(url_scheme(url))
    if factory is None:
        raise no_store(url, RAW_STORES, what)
    return factory(root, **(storage or {}))
