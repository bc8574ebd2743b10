"""A pass with nothing to do does nothing: the settled fingerprint.

When a pass ends with nothing ingested, nothing run and nothing waiting on the clock, it
records a fingerprint of everything a plan depends on: the spec and the user's feature
module, every raw file the sources match (name, size, modification time), the output
folders' listings, and the state database's progress (batches, stage runs, decisions).
The next pass computes the same fingerprint (a directory listing and a few queries, no
manifest opened, no stage imported) and, when it is unchanged, stops there. Anything that
could change the plan changes the fingerprint: a file landing or changing, a spec edit, an
output published, withdrawn or left behind by a crash, a decision recorded by ``driftloop
models``, a run by another worker.
"""

from __future__ import annotations

import hashlib
import os

from driftloop.core.layout import Layout
from driftloop.core.rawstore import RawObject
from driftloop.core.spec import Spec
from driftloop.core.state import StateDB
from driftloop.core.storage import candidate_files

FACT = "settled"


def fingerprint(
    spec: Spec, layout: Layout, db: StateDB, listed: list[tuple[str, RawObject]] | None = None
) -> str:
    """``listed``: the sources' listing (:func:`candidate_files`), when the caller has it."""
    digest = hashlib.sha256()
    digest.update(layout.spec.read_bytes())
    if spec.features.function:
        from driftloop.features.compute import user_module_path

        module = user_module_path(spec.features.function, layout.root)
        digest.update(module.read_bytes() if module.is_file() else b"missing")
    listed = candidate_files(spec, layout) if listed is None else listed
    files = [f"{o.key}\0{s}\0{o.size}\0{o.mtime_ns}\0{o.version}" for s, o in listed]
    digest.update("\n".join(files).encode())
    for folder in layout.outputs:
        try:
            names = sorted(os.listdir(folder))  # noqa: PTH208 - names only, fast
            stamp = os.stat(folder).st_mtime_ns  # noqa: PTH116
        except OSError:
            names, stamp = [], 0
        digest.update(f"{folder}\0{stamp}\0{len(names)}\0{names}\n".encode())
    digest.update(db.progress_marker().encode())
    return digest.hexdigest()


def time_sensitive(spec: Spec, waiting: str | None) -> bool:
    """New data waits on the retrain policy, and the policy looks at the clock: a later pass
    may decide otherwise with nothing else changed, so such a pass never settles."""
    retrain = spec.retrain
    return waiting is not None and (
        retrain.every_hours is not None or bool(retrain.cooldown_minutes)
    )
