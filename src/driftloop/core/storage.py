"""Where raw files are found: a source's glob over the project folder (or an absolute path).

Temporary names (a leading dot or underscore, or a suffix such as ``.part``) are files still
being written and are never listed.
"""

from __future__ import annotations

import glob
import os
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


def placement(spec: Spec, layout: Layout) -> dict[str, str]:
    """Every file the sources' globs match now (as the ledger names it: relative to the
    project when inside it) and the source it belongs to; the first source wins, as in ingest.
    One glob per source: a pass computes this once, not once per batch."""
    root, cwd = f"{layout.root.absolute()}{os.sep}", os.getcwd()  # noqa: PTH109
    found: dict[str, str] = {}
    for source in reversed(spec.sources):
        pattern = os.path.join(layout.root, source.path)  # noqa: PTH118
        for path in glob.glob(pattern, recursive=True):  # noqa: PTH207 - with **, fast
            # Layout.relative without a Path per file; anything unusual takes its way
            full = path if os.path.isabs(path) else os.path.join(cwd, path)  # noqa: PTH117, PTH118
            rel = full[len(root) :]
            plain = full.startswith(root) and os.sep == "/" and "/." not in f"/{rel}"
            found[rel if plain and "//" not in rel else layout.relative(Path(path))] = source.name
    return found


def source_paths(layout: Layout, pattern: str) -> list[Path]:
    """Files matching a source's glob: relative to the project folder, or absolute."""
    found = glob.glob(os.path.join(layout.root, pattern), recursive=True)  # noqa: PTH118, PTH207 - glob of an absolute or relative pattern, with **
    return sorted(Path(p) for p in found)
