"""A pass with nothing to do does nothing: the settled fingerprint.

When a pass ends with nothing ingested, nothing run and nothing waiting on the clock, it
records a fingerprint of everything a plan depends on: driftloop's version, the spec and
the user's feature module, the environment that picks the state and the registry, every
raw file the sources match (name, size, modification time), the output folders (whose
modification time changes with every entry added, removed or renamed), and the state
database's progress (batches, stage runs, decisions). The next pass computes the same
fingerprint (a directory listing and a few queries, no manifest opened, no stage imported)
and, when it is unchanged, stops there. Anything that could change the plan changes the
fingerprint: a file landing or changing, a spec or environment edit, an output published,
withdrawn or left behind by a crash, a decision recorded by ``driftloop models``, a run by
another worker.

The raw files' identities (size, modification time: what an edit in place changes) are kept
beside the fingerprint, not in it, and checked on a *recheck*, at most every
``ingest.recheck_seconds`` (the fact ``identities_checked_at``, the time of the last check
that found every file as the ledger took it and every trusted output committed). Between
rechecks a settled pass reads the sources' names alone (one directory read, no ``stat`` per
file: a file landing, leaving or renamed changes the names) and the ordinary pass takes the
ledger's record of its files' identities instead of a ``stat`` each, and trusts the outputs
through the watermark while their stage folder is as the last pass left it
(:func:`output_stamps`). So a file rewritten in place behind driftloop's back is reported by
the first pass after the next recheck (at once under ``driftloop watch``, which is told of
the write), and until then nothing is read from it: a batch prepared again hashes its files
and refuses one that changed.

The fact also keeps what the fingerprint was computed from (the spec's hash, its sources,
the feature module's path: a :class:`Basis`), so that :func:`quick_settled` can answer for
the embedded default without parsing the spec or importing the state layer: a settled
``driftloop run`` costs the interpreter, a listing and a read of the state file, whatever
the history.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.core.errors import DriftloopError
from driftloop.core.layout import Layout
from driftloop.core.rawstore import RawObject
from driftloop.core.storage import list_sources

if TYPE_CHECKING:
    from driftloop.core.spec import Spec
    from driftloop.core.state import StateDB

FACT = "settled"
CHECKED = "identities_checked_at"  # the time of the last clean recheck (see the docstring)
OUTPUTS = "outputs_seen"  # output_stamps as the last pass left them
STATE_URL_ENV = "DRIFTLOOP_STATE_URL"  # as core.spec has it (not imported: see quick_settled)
# what picks the state database and the registry, besides the spec
# (and where s3:// sources are listed: names, never credentials)
ENVIRONMENT = (
    STATE_URL_ENV,
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
)


@dataclass(frozen=True)
class Basis:
    """What a fingerprint is computed from, besides the files and the state."""

    spec_sha256: str
    sources: tuple[tuple[str, str], ...]  # (name, path) of each source, in order
    module: str | None  # the user's feature module's file, if any
    storage: tuple[tuple[str, str | None], ...] = ()  # the spec's storage settings
    recheck_seconds: float = 0.0  # ingest.recheck_seconds

    @classmethod
    def of(cls, spec: Spec, layout: Layout) -> Basis:
        module = None
        if spec.features.function:
            from driftloop.features.compute import user_module_path

            module = str(user_module_path(spec.features.function, layout.root))
        return cls(
            spec_sha256=hashlib.sha256(layout.spec.read_bytes()).hexdigest(),
            sources=tuple((s.name, s.path) for s in spec.sources),
            module=module,
            storage=tuple(sorted(spec.storage.settings().items())),
            recheck_seconds=spec.ingest.recheck_seconds,
        )


def fingerprint(basis: Basis, layout: Layout, progress: str, names: str) -> str:
    """``progress``: the state's progress marker; ``names``: :func:`source_names`."""
    import driftloop  # a release may key the stages differently

    digest = hashlib.sha256(f"{driftloop.__version__}\0{basis.spec_sha256}".encode())
    for name in ENVIRONMENT:
        digest.update(f"{name}\0{os.environ.get(name, '')}\n".encode())
    if basis.module is not None:
        module = Path(basis.module)
        digest.update(module.read_bytes() if module.is_file() else b"missing")
    digest.update(names.encode())
    for folder, stamp in output_stamps(layout).items():
        digest.update(f"{folder}\0{stamp}\n".encode())
    digest.update(progress.encode())
    return digest.hexdigest()


def _plain_folder(path: str) -> str | None:
    """The folder of a source's glob when it is a plain folder of this machine."""
    folder, _, _ = path.replace(os.sep, "/").rpartition("/")
    if not folder or "://" in folder or any(c in folder for c in "*?["):
        return None
    return folder


def plain_names(basis: Basis, layout: Layout) -> str:
    """A digest of every name in the sources' plain folders (one directory read each, no
    look at any file): a file landing, leaving or renamed there changes it. Taken before
    the listing a pass works from, so that a file landing during the pass changes it."""
    digest = hashlib.sha256()
    for name, path in basis.sources:
        folder = _plain_folder(path)
        if folder is None:
            continue
        try:
            found = sorted(os.listdir(layout.root / folder))  # noqa: PTH208 - names: 10,000s
        except OSError:
            found = ["\0missing"]
        digest.update(f"{name}\0{folder}\0{len(found)}\n".encode())
        digest.update("\0".join(found).encode(errors="surrogateescape"))
    return digest.hexdigest()


def source_names(basis: Basis, plain: str, listed: list[tuple[str, RawObject]]) -> str:
    """:func:`plain_names`, and the listed keys of the other sources (globs across folders,
    object stores), with the object's version where the store has one (an object store's
    listing gives it for free: an object overwritten in place is seen at once there)."""
    plain_sources = {n for n, p in basis.sources if _plain_folder(p) is not None}
    others = [f"{o.key}\0{s}\0{o.version}" for s, o in listed if s not in plain_sources]
    text = "\n".join([plain, *others])
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()


def identities(listed: list[tuple[str, RawObject]]) -> str:
    """The listed files' identities (size, modification time, version), as one digest."""
    files = [f"{o.key}\0{o.size}\0{o.mtime_ns}\0{o.version}" for _, o in listed]
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def output_stamps(layout: Layout) -> dict[str, str]:
    """Each output folder's identity and modification time: an output published, withdrawn
    or left behind adds, removes or renames an entry, which changes it (no need to list
    10,000 names). A marker removed inside an output's own folder does not: a recheck
    finds that."""
    stamps = {}
    for folder in layout.outputs:  # named as in the project (however its path is spelled)
        try:
            st = os.stat(folder)  # noqa: PTH116
            stamps[layout.relative(folder)] = f"{st.st_ino}:{st.st_mtime_ns}"
        except OSError:
            stamps[layout.relative(folder)] = "missing"
    return stamps


def recheck_due(checked: str | None, recheck_seconds: float, now: float | None = None) -> bool:
    """Whether a pass must check every file's identity and every trusted output (the fact
    ``CHECKED`` as recorded: None or unreadable when never, or when the last check found a
    file changed)."""
    try:
        at = float(checked) if checked is not None else 0.0
    except ValueError:
        at = 0.0
    now = time.time() if now is None else now
    return at <= 0.0 or not 0.0 <= now - at < recheck_seconds


def current(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    listed: list[tuple[str, RawObject]],
    unmatched: list[dict[str, str]],
    plain: str,
) -> str:
    """The fact a pass would record now (compare it with ``db.fact(FACT)``); ``unmatched``:
    the files in the sources' folders that no pattern matches, reported by every pass;
    ``plain``: :func:`plain_names` as the pass began."""
    basis = Basis.of(spec, layout)
    names = source_names(basis, plain, listed)
    found = fingerprint(basis, layout, db.progress_marker(), names)
    folders = folder_stamps(basis, layout)
    fact = {
        "fingerprint": found,
        "identities": identities(listed),
        "folders": folders,
        "unmatched": unmatched,
        **asdict(basis),
    }
    return json.dumps(fact, sort_keys=True)


@dataclass(frozen=True)
class Settled:
    """A settled project, as :func:`quick_settled` found it."""

    unmatched: tuple[dict[str, str], ...]  # still to be reported, as every pass does


def folder_stamps(basis: Basis, layout: Layout) -> dict[str, int]:
    """The modification time of each source's folder, where the source is a plain folder of
    this machine: a file landing, leaving or renamed there changes it. Only a quick "no":
    equal stamps still need the listing (a file rewritten in place does not change them)."""
    stamps = {}
    for _, path in basis.sources:
        folder = _plain_folder(path)
        if folder is None:
            continue
        try:
            stamps[folder] = os.stat(layout.root / folder).st_mtime_ns  # noqa: PTH116
        except OSError:
            stamps[folder] = 0
    return stamps


def quick_settled(project: Path) -> Settled | None:
    """True when the last pass settled and nothing changed since, decided without parsing
    the spec or opening the state database through SQLAlchemy (their imports cost more than
    the rest of a settled pass). Only for the embedded default (the state file of
    ``Layout.state_db``); None whenever in doubt: the ordinary pass then decides."""
    from driftloop.core.state_peek import peek, touch_fact

    layout = Layout(project)
    if os.environ.get(STATE_URL_ENV):
        return None
    started = time.time()
    seen = peek(layout.state_db, FACT, checked=CHECKED)
    if seen is None or seen.settled is None or seen.busy:
        return None
    try:
        fact = json.loads(seen.settled)
        basis = Basis(
            spec_sha256=fact["spec_sha256"],
            sources=tuple((str(n), str(p)) for n, p in fact["sources"]),
            module=fact["module"],
            storage=tuple((str(k), v) for k, v in fact.get("storage", ())),
            recheck_seconds=float(fact.get("recheck_seconds", 0.0)),
        )
        if hashlib.sha256(layout.spec.read_bytes()).hexdigest() != basis.spec_sha256:
            return None
        if folder_stamps(basis, layout) != fact["folders"]:
            return None  # a file landed or left: no need to list them all to know
        due = recheck_due(seen.checked, basis.recheck_seconds, started)
        plain = plain_names(basis, layout)
        # between rechecks the names alone (a directory read); on one, every identity
        listed: list[tuple[str, RawObject]] = []
        if due or any(_plain_folder(p) is None for _, p in basis.sources):
            storage = dict(basis.storage)
            listed = list_sources(basis.sources, layout, storage=storage, names_only=not due)
        if due and identities(listed) != fact["identities"]:
            return None  # a file changed in place (or was touched): the ordinary pass looks
        names = source_names(basis, plain, listed)
    except (ValueError, KeyError, TypeError, OSError, DriftloopError):
        return None  # an older fact, a spec gone, a source that cannot be listed: not sure
    if fingerprint(basis, layout, seen.progress, names) != fact["fingerprint"]:
        return None
    if due and seen.checked is not None:  # a clean recheck: the next ones can wait again
        touch_fact(layout.state_db, CHECKED, seen.checked, repr(started))
    unmatched = fact.get("unmatched")
    return None if not isinstance(unmatched, list) else Settled(unmatched=tuple(unmatched))


def time_sensitive(spec: Spec, waiting: str | None) -> bool:
    """New data waits on the retrain policy, and the policy looks at the clock: a later pass
    may decide otherwise with nothing else changed, so such a pass never settles."""
    retrain = spec.retrain
    return waiting is not None and (
        retrain.every_hours is not None or bool(retrain.cooldown_minutes)
    )
