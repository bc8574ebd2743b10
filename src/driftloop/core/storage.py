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


def source_paths(layout: Layout, pattern: str) -> list[Path]:
    """Files matching a source's glob: relative to the project folder, or absolute."""
    found = glob.glob(os.path.join(layout.root, pattern), recursive=True)  # noqa: PTH118, PTH207 - glob of an absolute or relative pattern, with **
    return sorted(Path(p) for p in found)
