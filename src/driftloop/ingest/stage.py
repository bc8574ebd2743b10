"""Ingest: find raw files that have landed, take each exactly once, and form a batch.

Raw files are listed, read and hashed through each source's store
(:mod:`driftloop.core.rawstore`), chosen from the source's URL. A file is identified by the
SHA-256 of its content. A file re-uploaded unchanged (same content, any name) is recognised
and not taken again. A file that is still being written is left for a later pass: names
with a temporary suffix or a leading dot/underscore are skipped, and a file must keep the
same identity (size, modification time, version) for ``ingest.settle_seconds``.
Raw files are only ever read.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from driftloop.core.layout import Layout
from driftloop.core.rawstore import RawObject
from driftloop.core.spec import Spec
from driftloop.core.stage import Context, StageCall, StageDef, Work
from driftloop.core.state import Batch, RawFile, StateDB, utcnow
from driftloop.core.storage import candidate_files, link_refusal, source_stores
from driftloop.core.text import shown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reupload:
    path: str
    same_as: str


@dataclass
class IngestResult:
    batch: Batch | None
    new_files: list[RawFile] = field(default_factory=list)
    reuploads: list[Reupload] = field(default_factory=list)
    still_writing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # files that could not be read, why
    refused: list[str] = field(default_factory=list)  # links that leave the project, why
    changed: list[str] = field(default_factory=list)  # files changed in place, why (not taken)


def ingest(
    spec: Spec,
    layout: Layout,
    db: StateDB,
    *,
    wait: bool = True,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    complete: Mapping[str, tuple[int, int]] | None = None,
    listed_files: list[tuple[str, RawObject]] | None = None,
    taken_before: set[tuple[str, int, int]] | None = None,
) -> IngestResult:
    """Take every new, complete raw file into one new batch (or none if nothing is new).

    With ``wait`` the call sleeps until files younger than the settle time are old enough
    and checks they did not change; without it such files are left for the next pass, and
    new complete files become one batch only once none of them is younger than
    ``ingest.batch_window_seconds`` (files of one delivery land together).
    ``complete`` maps the keys of raw objects the caller saw finished (closed after writing,
    or renamed into place: ``driftloop watch`` learns this from the store's notifications)
    to their (size, mtime_ns) then; such a file, unchanged since, needs no settle time.
    ``listed_files``: the sources' listing (:func:`driftloop.core.storage.candidate_files`),
    when the caller has it; ``taken_before``: :meth:`StateDB.ingested_sightings`, likewise.
    """
    settle = spec.ingest.settle_seconds
    stores = source_stores(spec, layout)
    listed = candidate_files(spec, layout, stores) if listed_files is None else listed_files
    # A file the ledger already took, unchanged since (same key, size and time), is passed
    # over without a look: a pass costs what landed, not what landed before.
    if taken_before is None:
        taken_before = db.ingested_sightings()
    listed = [(s, o) for s, o in listed if (o.key, o.size, o.mtime_ns) not in taken_before]
    done = complete or {}

    def finished(obj: RawObject) -> bool:
        return done.get(obj.key) == obj.seen

    young = [o for _, o in listed if clock() - o.mtime < settle and not finished(o)]
    if young and wait:
        youngest = max(o.mtime for o in young)
        sleep(max(0.0, settle - (clock() - youngest)))
    result = IngestResult(batch=None)
    new: list[RawFile] = []
    newest = 0.0  # the latest modification among the new files
    taken: dict[str, str] = {}
    for source, before in listed:
        rel, store = before.key, stores[source]
        refusal = link_refusal(spec, layout, source, store, rel)
        if refusal is not None:  # never opened: the other files go on
            log.info("%s is refused: %s", shown(rel), refusal)
            result.refused.append(f"{rel}: {refusal}")
            continue
        try:
            now = store.stat(rel)
        except OSError:
            continue
        if now != before or (clock() - now.mtime < settle and not finished(now)):
            result.still_writing.append(rel)
            continue
        sha = db.known_sighting(rel, now.size, now.mtime_ns)
        if sha is None:
            try:
                sha = store.sha256(rel)
                after = store.stat(rel)
            except OSError as exc:  # unreadable (permissions) or gone: the others go on
                log.warning("%s cannot be read (%s); left for a later pass", shown(rel), exc)
                result.unreadable.append(f"{rel}: {exc.strerror or exc}")
                continue
            if after != now:
                result.still_writing.append(rel)
                continue
            db.record_sighting(rel, now.size, now.mtime_ns, sha)
        known = db.raw_file(sha)
        if known is not None or sha in taken:
            original = known.path if known is not None else taken[sha]
            if original != rel:
                result.reuploads.append(Reupload(rel, original))
            continue
        earlier = db.raw_file_at(rel)
        if earlier is not None:  # the same name, new content: never counted twice
            why = changed_in_place(earlier, sha)
            log.info("%s is not ingested: %s", shown(rel), why)
            result.changed.append(f"{rel}: {why}")
            continue
        taken[sha] = rel
        new.append(RawFile(sha, source, rel, now.size, batch_id=""))
        newest = max(newest, now.mtime)
    if result.reuploads:
        for r in result.reuploads:
            log.info(
                "%s has the same content as %s; not ingested again", shown(r.path), shown(r.same_as)
            )
    if not new:
        return result
    window = spec.ingest.batch_window_seconds
    if not wait and window and clock() - newest < window:
        # A loop that takes files as they land: more files of the same delivery may be on
        # their way, so the batch waits until new files stop coming. (One pass on demand,
        # ``driftloop run``, takes what is there.)
        result.still_writing += [f.path for f in new]
        return result
    batch_id = make_batch_id(new)
    files = [RawFile(f.sha256, f.source, f.path, f.size, batch_id) for f in new]
    result.batch = db.create_batch(batch_id, files)
    result.new_files = files
    log.info("batch %s: %d new file(s)", batch_id, len(files))
    return result


def changed_in_place(earlier: RawFile, sha: str) -> str:
    """Why a file whose name the ledger took with other content is not ingested.

    The rule: a raw file is never modified. Its rows are in ``earlier``'s batch already; were
    the new content ingested as a file of its own, every row it kept would be trained on
    twice. So it is refused, on every pass, until the original content is back or the file
    is gone; new rows land under a new name."""
    return (
        f"changed in place since it was ingested in batch {earlier.batch_id} (sha256 "
        f"{earlier.sha256[:12]}..., now {sha[:12]}...), so it is not ingested again: its "
        "earlier rows would be counted twice. Raw files must not be modified: put the "
        "original content back, and land new rows under a new file name (only the new "
        "rows, or the old ones are counted twice)"
    )


def make_batch_id(files: list[RawFile]) -> str:
    digest = hashlib.sha256("".join(sorted(f.sha256 for f in files)).encode()).hexdigest()
    return f"{utcnow():%Y%m%dT%H%M%S}-{digest[:8]}"


def work(ctx: Context, call: StageCall) -> Work:
    """``driftloop stage ingest``: complete new files into one new batch (or none), as
    ``driftloop run`` takes them (a file younger than ``ingest.settle_seconds`` is waited
    for, then checked to be unchanged)."""

    def run(started: float) -> dict[str, Any]:
        found = ingest(ctx.spec, ctx.layout, ctx.db, wait=True)
        return {
            "stage": "ingest",
            "batch_id": found.batch.batch_id if found.batch else None,
            "new_files": [{"path": f.path, "sha256": f.sha256} for f in found.new_files],
            "reuploads": [{"path": r.path, "same_as": r.same_as} for r in found.reuploads],
            "still_writing": found.still_writing,
            "unreadable": found.unreadable,
            "refused": found.refused,
            "changed": found.changed,
        }

    return Work("ingest", ctx.layout.raw, run)


STAGE = StageDef(
    "ingest",
    per_batch=False,
    work=work,
    help="take complete new raw files, each exactly once, into a new batch",
    keyed=False,
)
