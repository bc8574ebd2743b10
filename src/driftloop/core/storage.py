"""Where raw files are found: each source's glob, in the store its URL names
(:mod:`driftloop.core.rawstore`; a folder of this machine for a plain path).

Temporary names (a leading dot or underscore, or a suffix such as ``.part``) are files still
being written and are never listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from driftloop.core.errors import StorageError
from driftloop.core.layout import Layout
from driftloop.core.rawstore import RawObject, RawStore, raw_store

if TYPE_CHECKING:
    from driftloop.core.spec import Spec

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


def is_temporary(key: str) -> bool:
    name = key.rstrip("/")
    name = name[name.rfind("/") + 1 :]
    return name.startswith((".", "_")) or name.endswith(TEMP_SUFFIXES)


def is_unnamed(key: str) -> bool:
    """True when a key is not valid UTF-8 (a local file name with bytes the file system does
    not decode; Python keeps them as lone surrogates): the ledger, the state database and
    every output hold text, so such a file is never listed, only reported
    (:func:`unmatched_files`) for the user to rename."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


UNNAMED = (
    "its name is not valid UTF-8, so it is not read; rename it to a UTF-8 name "
    "(convmv converts names from another encoding)"
)


def source_stores(spec: Spec, layout: Layout) -> dict[str, RawStore]:
    """Each source's store, chosen once from its path's URL scheme.

    A scheme without a store is a :class:`~driftloop.core.errors.StorageSchemeError` naming
    the source and its path. Object stores are built with the spec's ``storage`` settings.
    """
    storage = spec.storage.settings()
    return {
        source.name: raw_store(
            source.path, layout.root, what=f"source {source.name!r}", storage=storage
        )
        for source in spec.sources
    }


def candidate_files(
    spec: Spec,
    layout: Layout,
    stores: dict[str, RawStore] | None = None,
    known: Mapping[str, tuple[int, int]] | None = None,
) -> list[tuple[str, RawObject]]:
    """(source name, object) for every complete object a source's glob matches; the first
    source wins. ``known``: identities (size, mtime_ns) to take as they are instead of a
    ``stat`` each, where the store can list names alone (a folder of this machine)."""
    stores = stores or source_stores(spec, layout)
    return list_sources([(s.name, s.path) for s in spec.sources], layout, stores, known=known)


def list_sources(
    sources: Iterable[tuple[str, str]],
    layout: Layout,
    stores: dict[str, RawStore] | None = None,
    storage: Mapping[str, str | None] | None = None,
    known: Mapping[str, tuple[int, int]] | None = None,
    names_only: bool = False,
) -> list[tuple[str, RawObject]]:
    """:func:`candidate_files` for (name, path) pairs, with no spec at hand (``storage``:
    the spec's storage settings, :meth:`~driftloop.core.spec.StorageSpec.settings`).
    ``names_only``: the keys alone, with no look at each object (size and mtime_ns -1),
    where the store can name objects without one."""
    seen: set[str] = set()
    found: list[tuple[str, RawObject]] = []
    for name, path in sources:
        store = (
            stores[name]
            if stores
            else raw_store(path, layout.root, what=f"source {name!r}", storage=storage)
        )
        trusting = getattr(store, "list_trusting", None)
        try:
            if names_only and trusting is not None:
                objects = [RawObject(k, -1, -1) for k in store.keys(path)]
            elif known is not None and trusting is not None:
                objects = trusting(path, known)
            else:
                objects = store.list(path)
        except StorageError as exc:  # the store's error names the bucket; this, the source
            raise type(exc)(f"source {name!r} (path {path!r}): {exc}") from exc
        for obj in objects:
            if not is_temporary(obj.key) and obj.key not in seen and not is_unnamed(obj.key):
                seen.add(obj.key)
                found.append((name, obj))
    return found


def source_folder(pattern: str) -> tuple[str, bool] | None:
    """The folder a source's glob looks in, up to its first wildcard, and whether the glob
    recurses below it (``**``); None for a glob whose folder part is all wildcards."""
    parts = pattern.replace("\\", "/").split("/")
    plain: list[str] = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        plain.append(part)
    if not plain:
        return None
    return "/".join(plain), len(plain) < len(parts) - 1


def unmatched_files(
    spec: Spec,
    layout: Layout,
    listed: list[tuple[str, RawObject]],
    stores: dict[str, RawStore] | None = None,
) -> list[dict[str, str]]:
    """Files in a source's folder that no source's glob matches (``data.test`` beside
    ``*.data``), each with the folder's source and the pattern it missed: they are reported,
    never read, so that a file landed under the wrong name does not vanish. ``listed`` is
    :func:`candidate_files`' answer; temporary names are left out, as there. A file whose
    name is not valid UTF-8 (:func:`is_unnamed`) is reported here too, with ``problem``
    saying so (its ``path`` keeps the undecodable bytes as Python holds them: show it with
    :func:`driftloop.core.text.shown`)."""
    stores = stores or source_stores(spec, layout)
    matched = {obj.key for _, obj in listed}
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for source in spec.sources:
        where = source_folder(source.path)
        if where is None:
            continue
        folder, recursive = where
        pattern = f"{folder}/**/*" if recursive else f"{folder}/*"
        for key in stores[source.name].keys(pattern):  # names only: no look at each file
            if key in matched or key in seen or is_temporary(key):
                continue
            seen.add(key)
            item = {"path": key, "source": source.name, "pattern": source.path}
            if is_unnamed(key):
                item["problem"] = UNNAMED
            out.append(item)
    return out


def link_refusal(spec: Spec, layout: Layout, source: str, store: RawStore, key: str) -> str | None:
    """Why a raw file of this machine is not read, or None: the file (or a folder on its
    way) is a symbolic link whose target lies outside the project folder and outside its
    source's folder, and the spec does not set ``ingest.follow_links_outside``.

    A link in a raw folder is someone else's choice of what driftloop reads: a link to a
    system file would be read, and a parser's error would quote its first line. The reason
    names the link, never what it points to or holds."""
    if spec.ingest.follow_links_outside or store.scheme != "file":
        return None
    path = store.local_path(key)
    if path is None:
        return None
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # gone, or a loop of links: the listing passes it over
        return None
    allowed = [layout.root.resolve()]
    pattern = next((s.path for s in spec.sources if s.name == source), None)
    where = source_folder(pattern) if pattern is not None else None
    if where is not None and (folder := store.local_path(where[0])) is not None:
        allowed.append(folder.resolve())
    if any(target.is_relative_to(root) for root in allowed):
        return None
    return (
        "a symbolic link to a file outside the project folder and outside the source's "
        "folder; not read. Copy the file into the source's folder, or set "
        "ingest.follow_links_outside: true in driftloop.yaml to read such links"
    )


def placement(found: list[tuple[str, RawObject]]) -> dict[str, str]:
    """Each listed object's key and the source it belongs to (see :func:`candidate_files`):
    a pass lists the sources once, not once per batch."""
    return {obj.key: source for source, obj in found}
