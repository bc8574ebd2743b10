"""Where raw files are found: a source's glob over the project folder (or an absolute path).

Temporary names (a leading dot or underscore, or a suffix such as ``.part``) are files still
being written and are never listed.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from driftloop.core.layout import Layout
from driftloop.core.spec import Spec

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


def is_temporary(path: Path) -> bool:
    name = path.name
    return name.startswith((".", "_")) or name.endswith(TEMP_SUFFIXES)


def candidate_files(spec: Spec, layout: Layout) -> list[tuple[str, Path]]:
    """(source name, path) for every file matching a source's glob; first source wins."""
    seen: set[Path] = set()
    found: list[tuple[str, Path]] = []
    for source in spec.sources:
        for path in source_paths(layout, source.path):
            if path.is_file() and not is_temporary(path) and path not in seen:
                seen.add(path)
                found.append((source.name, path))
    return found


@dataclass(frozen=True)
class Listed:
    """A file a source's glob matches: its name as the ledger spells it (relative to the
    project when inside it), its source, size and modification time."""

    path: str
    source: str
    size: int
    mtime_ns: int


def listing(spec: Spec, layout: Layout) -> list[Listed]:
    """Every file the sources' globs match now, with its size and modification time; the
    first source wins, as in ingest. A pattern whose folder part is plain (``data/raw/s/*.csv``)
    is read with one ``scandir`` of that folder; others go through ``glob``."""
    found: dict[str, Listed] = {}
    for source in reversed(spec.sources):  # the first source is written last: it wins
        for rel, st in _matches(layout, source.path):
            found[rel] = Listed(rel, source.name, st.st_size, st.st_mtime_ns)
    return sorted(found.values(), key=lambda f: f.path)


def placement(spec: Spec, layout: Layout) -> dict[str, str]:
    """Every file the sources' globs match now and the source it belongs to (see
    :func:`listing`). A pass computes this once, not once per batch."""
    return {f.path: f.source for f in listing(spec, layout)}


def _matches(layout: Layout, pattern: str) -> list[tuple[str, os.stat_result]]:
    folder, _, name = pattern.replace(os.sep, "/").rpartition("/")
    root = layout.root.absolute()
    if glob.has_magic(folder) or not glob.has_magic(name) or name.startswith("."):
        return _globbed(layout, pattern)
    base = Path(folder) if Path(folder).is_absolute() else root / folder
    inside = base.is_relative_to(root) and ".." not in Path(folder).parts
    prefix = f"{base.relative_to(root).as_posix()}/" if inside else None
    out = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, name):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            rel = prefix + entry.name if prefix is not None else layout.relative(Path(entry.path))
            out.append((rel.removeprefix("./"), st))
    return out


def _globbed(layout: Layout, pattern: str) -> list[tuple[str, os.stat_result]]:
    out = []
    for path in source_paths(layout, pattern):
        try:
            st = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((layout.relative(path), st))
    return out


def source_paths(layout: Layout, pattern: str) -> list[Path]:
    """Files matching a source's glob: relative to the project folder, or absolute."""
    found = glob.glob(os.path.join(layout.root, pattern), recursive=True)  # noqa: PTH118, PTH207 - glob of an absolute or relative pattern, with **
    return sorted(Path(p) for p in found)
