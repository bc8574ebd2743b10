"""Following the champion: which version it is, fetching it, and swapping it in.

The registry's ``champion`` alias is the truth. A background thread reads it every
``serving.poll_seconds``, and sooner when the alias moved: at once when the promotion gate
or ``driftloop models promote`` / ``rollback`` on this machine rewrites the state folder's
``champion-moved`` file (an OS notification, watchdog), else within
``serving.events_poll_seconds`` when the state database records ``ChampionMoved`` (checking
it is one small SQLite query; a shared PostgreSQL state reaches other machines so). When the alias
names another version, the thread loads it (from the local model cache, or downloads it),
warms it up, and only then swaps it in: requests keep being answered by the old model
meanwhile. A load that fails leaves the old model serving; the failure is logged, counted
and recorded as a ``ModelLoadFailed`` event.

At start, before MLflow is even imported, the thread serves the champion the state database
last recorded if that version is in the local cache; the registry check follows at once
and swaps if the alias says otherwise. Nothing here runs on the request path.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.core.errors import StateError, first_line
from driftloop.core.layout import Layout
from driftloop.core.spec import Spec
from driftloop.core.state import StateDB, state_exists
from driftloop.models import cache as model_cache
from driftloop.serving.model import ServedModel

if TYPE_CHECKING:
    from driftloop.models.registry import Registry

log = logging.getLogger(__name__)

FAILED_RETRY_SECONDS = 300.0  # a version that failed to load is tried again after this


class ModelSlot:
    """The model that answers requests; replaced by one assignment (atomic in Python)."""

    def __init__(self) -> None:
        self.current: ServedModel | None = None

    def swap(self, model: ServedModel) -> ServedModel | None:
        old, self.current = self.current, model
        return old


@dataclass
class ChampionSource:
    """Where versions and packages come from: the registry, the state database, the cache."""

    spec: Spec
    layout: Layout
    _registry: Registry | None = field(default=None, repr=False, compare=False)

    @property
    def registry(self) -> Registry:
        """The project's registry (opened on first use: nothing is imported before)."""
        if self._registry is None:
            from driftloop.models.registry import open_registry

            self._registry = open_registry(self.spec, self.layout)
        return self._registry

    @property
    def store_uri(self) -> str:
        return self.registry.uri

    def _state(self) -> StateDB | None:
        """The project's state database, if it exists (a server never creates one)."""
        path, url = self.layout.state_db, self.spec.state.url
        return StateDB(path, url=url) if state_exists(path, url) else None

    def recorded_champion(self) -> str | None:
        """The champion the state database last recorded (promotion, manual, rollback)."""
        db = self._state()
        if db is None:
            return None
        with db:
            return db.applied_champion(self.spec.name)

    def promotion_mark(self) -> int:
        """An id that grows whenever the alias moves (0 without a state database).

        ``ChampionMoved`` is written once the alias has moved (``ModelPromoted``, the
        decision, comes just before: a check on it could still find the old alias).
        """
        db = self._state()
        if db is None:
            return 0
        with db:
            return db.last_event_id(("ChampionMoved",))

    def decision(self, version: str) -> dict[str, Any] | None:
        """The latest recorded decision that made ``version`` champion."""
        db = self._state()
        if db is None:
            return None
        with db:
            return db.decision_for(self.spec.name, version)

    def registry_champion(self) -> str | None:
        from driftloop.models.registry import CHAMPION

        return self.registry.alias(CHAMPION)  # a store never written has none (and stays so)

    def recorded_run(self, version: str) -> str | None:
        """The run id of ``version`` as this project registered it in this store, before the
        decision that made it champion (a store made again reuses numbers: the number alone
        could name another model)."""
        db = self._state()
        if db is None:
            return None
        store = model_cache.store_id(self.store_uri)
        with db:
            decided = db.decision_for(self.spec.name, version)
            registered = db.events_after(0, types=("ModelRegistered",))
        runs = [
            str(e["run_id"])
            for e in registered
            if e.get("model") == self.spec.name
            and str(e.get("version")) == version
            and e.get("store") in (None, store)
            and (decided is None or str(e["ts"]) <= str(decided["ts"]))
        ]
        return runs[-1] if runs else None

    def registry_run(self, version: str) -> str | None:
        """The run id the registry holds under ``version`` now."""
        found = self.registry.get_version(version)
        return found.run_id if found is not None else None

    def cached(self, version: str, run_id: str) -> Path | None:
        return model_cache.lookup(self.layout, self.spec.name, self.store_uri, version, run_id)

    def fetch(self, version: str) -> Path:
        """The cache entry of a version, downloading it from the registry when absent."""
        return model_cache.fetch(self.registry, self.layout, version)


class ChampionWatcher:
    """The background thread that keeps ``slot`` on the registry's champion."""

    def __init__(
        self,
        source: ChampionSource,
        slot: ModelSlot,
        *,
        poll_seconds: float,
        events_poll_seconds: float,
        load: Callable[[str, Path], ServedModel],
        on_swap: Callable[[ServedModel, ServedModel | None], None],
        on_failure: Callable[[str, str], None],
    ) -> None:
        self.source = source
        self.slot = slot
        self.poll_seconds = poll_seconds
        self.events_poll_seconds = events_poll_seconds
        self._load = load
        self._on_swap = on_swap
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._check_now = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.first_attempt = threading.Event()  # set once the first champion load was tried
        self.registry_checked_at: float | None = None  # time.time() of the last good check
        self._failed: tuple[str, float] | None = None  # a version that failed, retry after
        self._observer: Any = None  # watchdog's, on the state folder, once it exists
        self.notified = threading.Event()  # set once the state folder is watched

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="driftloop-champion", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._check_now.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._observer:
            self._observer.stop()
            self._observer.join(timeout)
        self._observer = None

    def _watch_moves(self) -> None:
        """Check the registry at once when ``champion-moved`` in the state folder is
        rewritten (promotion/alias.py); without the folder yet, or without OS notifications,
        the polls alone follow the alias (tried again at the next tick)."""
        folder = self.source.layout.state_dir
        if self._observer is not None or not folder.is_dir():
            return
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        name = self.source.layout.champion_moved.name
        wake = self._check_now

        class _Moved(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in ("created", "modified", "closed", "moved"):
                    return
                path = event.dest_path if event.event_type == "moved" else event.src_path
                if Path(os.fsdecode(path)).name == name:
                    wake.set()

        observer = Observer()
        try:
            observer.schedule(_Moved(), str(folder), recursive=False)
            observer.start()
        except Exception as exc:  # no inotify watches left, an exotic file system, ...
            log.warning(
                "no notifications of promotions (%s); polling the state database every %gs",
                exc,
                self.events_poll_seconds,
            )
            self._observer = False  # not tried again
            return
        self._observer = observer
        self.notified.set()

    def check_now(self) -> None:
        """Ask for a registry check at the next tick (used by tests and signals)."""
        self._check_now.set()

    def _run(self) -> None:
        recorded = self._quietly(self.source.recorded_champion)
        run = self._quietly(lambda: self.source.recorded_run(recorded)) if recorded else None
        folder = self.source.cached(recorded, run) if recorded and run else None
        if recorded is not None and folder is not None:
            self._swap_to(
                recorded, origin="local cache (the state database's champion)", folder=folder
            )
            if self.slot.current is not None:
                self.first_attempt.set()  # serve now; the registry check follows at once
        mark = self._quietly(self.source.promotion_mark) or 0
        next_poll = 0.0
        while not self._stop.is_set():
            self._watch_moves()
            now = time.monotonic()
            latest = self._quietly(self.source.promotion_mark) or mark
            if latest != mark or now >= next_poll or self._check_now.is_set():
                self._check_now.clear()
                mark = latest
                next_poll = now + self.poll_seconds
                self._follow_registry()
                self.first_attempt.set()
            self._check_now.wait(self.events_poll_seconds)

    def _follow_registry(self) -> None:
        try:
            version = self.source.registry_champion()
        except Exception as exc:
            self._remember(f"the registry did not answer: {first_line(exc)}")
            return
        self.registry_checked_at = time.time()
        current = self.slot.current
        if version is None:
            if current is None:
                self._remember(
                    f"model {self.source.spec.name!r} has no champion yet; train one with "
                    "'driftloop run'"
                )
            return
        if current is not None and current.version == version:
            try:  # the same number from a store made again is another model: its run tells
                same = self.source.registry_run(version) in (None, current.info.get("run_id"))
            except Exception as exc:
                self._remember(f"the registry did not answer: {first_line(exc)}")
                return
            if same:
                self._refresh_decision(current)
                return
            log.warning(
                "the registry's v%s is another run than the one served (its store was made "
                "again?); loading it",
                version,
            )
        if (
            self._failed is not None
            and self._failed[0] == version
            and time.time() < self._failed[1]
        ):
            return  # it failed to load a moment ago: not again at every poll
        self._swap_to(version, origin="registry")

    def _swap_to(self, version: str, *, origin: str, folder: Path | None = None) -> None:
        started = time.perf_counter()
        try:
            folder = folder or self.source.fetch(version)
            model = self._load(version, folder)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            log.exception(
                "loading %s v%s failed; the current model keeps serving",
                self.source.spec.name,
                version,
            )
            self._remember(f"loading v{version} failed: {reason}")
            self._on_failure(version, reason)
            self._failed = (version, time.time() + FAILED_RETRY_SECONDS)
            return
        model.info["origin"] = origin
        model.info["swap_seconds"] = round(time.perf_counter() - started, 3)
        self._refresh_decision(model)
        model.info["served_since"] = time.time()
        old = self.slot.swap(model)
        self.last_error = None
        log.info(
            "serving %s v%s (was %s), loaded from %s in %.2fs",
            model.name,
            version,
            f"v{old.version}" if old else "nothing",
            origin,
            model.info["swap_seconds"],
        )
        self._on_swap(model, old)

    def _refresh_decision(self, model: ServedModel) -> None:
        decision = self._quietly(lambda: self.source.decision(model.version))
        if decision is not None:
            model.info["promotion"] = decision

    def _remember(self, error: str) -> None:
        if error != self.last_error:
            log.warning("%s", error)
        self.last_error = error

    @staticmethod
    def _quietly(read: Callable[[], Any]) -> Any:
        """A state-database read that may fail (locked, damaged) without stopping the thread."""
        try:
            return read()
        except (sqlite3.Error, StateError, OSError) as exc:
            log.warning("reading the state database failed: %s", exc)
            return None


def worker_id() -> str:
    return f"pid {os.getpid()}"
