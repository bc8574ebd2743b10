"""The state store on both backends: every StateDB behaviour on a SQLite file and on a real
PostgreSQL server (tests/fixtures/postgres.py), claims under contention from threads and
processes, batch numbers from concurrent writers, and URLs that never show a password."""

from __future__ import annotations

import logging
import multiprocessing
import socket
import sqlite3
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from driftloop.core.errors import SpecError, StateError
from driftloop.core.spec import STATE_URL_ENV, parse_spec
from driftloop.core.state import Claim, CurrentKeys, RawFile, StateDB
from driftloop.core.state_store import promotions, resolve_url
from tests.fixtures.postgres import PASSWORD

GUARD = 300.0  # a hang guard for joins and barriers, never a wait that a test relies on


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str | None]:
    """(path, url) to open the same kind of database twice: the file, or a fresh server db."""
    if request.param == "sqlite":
        return tmp_path / ".driftloop" / "state.db", None
    return tmp_path / "unused.db", request.getfixturevalue("postgres_url")


@pytest.fixture
def db(target: tuple[Path, str | None]) -> Iterator[StateDB]:
    path, url = target
    with StateDB(path, url=url) as state:
        yield state


def files(batch: str, *shas: str) -> list[RawFile]:
    return [RawFile(s, "orders", f"orders/{s}.csv", 10 + i, batch) for i, s in enumerate(shas)]


# -- the ledger --------------------------------------------------------------------------


def test_sightings_and_raw_files(db: StateDB) -> None:
    assert db.known_sighting("orders/a.csv", 10, 123) is None
    db.record_sighting("orders/a.csv", 10, 123, "aa")
    db.record_sighting("orders/a.csv", 10, 123, "zz")  # the same sighting again: kept as it was
    assert db.known_sighting("orders/a.csv", 10, 123) == "aa"
    assert db.known_sighting("orders/a.csv", 10, 2**62) is None  # a nanosecond mtime fits
    db.record_sighting("orders/a.csv", 10, 2**62, "bb")
    assert db.known_sighting("orders/a.csv", 10, 2**62) == "bb"
    assert db.raw_file("aa") is None


def test_batches_files_and_data_arrived(db: StateDB) -> None:
    first = db.create_batch("b1", files("b1", "a2", "a1"))
    second = db.create_batch("b2", files("b2", "c1"))
    assert (first.batch_id, first.seq, second.seq) == ("b1", 1, 2)
    assert db.batches() == [first, second]
    assert db.raw_file("a1") == RawFile("a1", "orders", "orders/a1.csv", 11, "b1")
    assert [f.sha256 for f in db.batch_files("b1")] == ["a1", "a2"]  # by source, path
    assert [f.sha256 for f in db.files_until(1)] == ["a1", "a2"]
    assert [f.sha256 for f in db.files_until(2)] == ["a1", "a2", "c1"]
    arrived = db.events_after(0, ("DataArrived",))
    assert [e["batch_id"] for e in arrived] == ["b1", "b2"]
    assert arrived[0]["files"] == [
        {"path": "orders/a2.csv", "sha256": "a2"},
        {"path": "orders/a1.csv", "sha256": "a1"},
    ]


def test_a_conflicting_batch_records_nothing(db: StateDB) -> None:
    db.create_batch("b1", files("b1", "a1"))
    with pytest.raises(StateError, match="batch b2 conflicts"):
        db.create_batch("b2", files("b2", "c1", "a1"))  # a1 is in the ledger already
    assert [b.batch_id for b in db.batches()] == ["b1"]
    assert db.raw_file("c1") is None
    assert db.create_batch("b3", files("b3", "c1")).seq == 2


# -- stage runs ----------------------------------------------------------------------------


def test_stage_runs(db: StateDB) -> None:
    assert db.run_status("k1") == (None, None) and db.run_info("k1") is None
    db.start_run("k1", "prep", "b1")
    assert db.run_status("k1") == ("running", None) and not db.succeeded("k1")
    db.finish_run("k1", "prep", "b1", 0.5, None, "disk full", retry=True)
    assert db.run_status("k1") == ("error", "disk full")
    db.start_run("k1", "prep", "b1")
    info = db.run_info("k1")
    assert info is not None and info["attempts"] == 2 and info["error"] is None
    db.finish_run("k1", "prep", "b1", 1.25, "data/processed/b1", None)
    assert db.succeeded("k1")
    db.start_run("k2", "prep", "b2")
    db.finish_run("k2", "prep", "b2", 0.1, None, "bad rows")
    assert db.run_status("k2") == ("failed", "bad rows")
    last = db.last_succeeded("prep")
    assert last is not None and last["key"] == "k1" and last["output"] == "data/processed/b1"
    assert db.last_succeeded("train") is None
    runs = db.stage_runs()
    assert {r["key"] for r in runs} == {"k1", "k2"}
    assert set(runs[0]) == {
        "key",
        "stage",
        "batch_id",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "seconds",
        "output",
        "error",
    }
    assert next(r for r in runs if r["key"] == "k1")["seconds"] == 1.25
    types = [e["type"] for e in db.events()]
    started_failed = ["StageStarted", "StageFailed"]
    assert types == [*started_failed, "StageStarted", "StageSucceeded", *started_failed]
    assert db.last_event("StageFailed")["error"] == "bad rows"  # type: ignore[index]


def test_failures_dismissed_and_retried(db: StateDB) -> None:
    """The failures in the way are the current keys that failed; a dismissal and a retry
    are recorded with who (and why), and a key replaced by a newer run is no failure."""
    db.start_run("k1", "prep", "b1")
    db.finish_run("k1", "prep", "b1", 0.1, None, "too many bad rows")
    db.start_run("k2", "prep", "b2")
    db.finish_run("k2", "prep", "b2", 0.1, None, "disk", retry=True)
    db.start_run("k3", "prep", "b3")
    db.finish_run("k3", "prep", "b3", 0.1, None, "old failure")
    db.start_run("k4", "prep", "b3")  # b3's spec changed: a new key made its output
    db.finish_run("k4", "prep", "b3", 0.1, "data/processed/b3", None)
    found = [(f["key"], f["status"]) for f in db.failures()]
    assert found == [("k1", "failed"), ("k2", "error")]
    done = db.dismiss("k1", reason="a test file", actor="ana")
    assert (done["batch_id"], done["actor"], done["reason"]) == ("b1", "ana", "a test file")
    assert db.dismissed_keys() == {("prep", "b1"): "k1"}
    assert [f["key"] for f in db.failures(dismissed=False)] == ["k2"]
    with pytest.raises(StateError, match="not a failed run"):
        db.dismiss("k4", reason="x", actor="ana")
    db.request_retry("k1", actor="bo")
    assert db.run_info("k1")["status"] == "retry"  # type: ignore[index]
    assert db.dismissed_keys() == {}
    assert [e["type"] for e in db.events()][-2:] == ["FailureDismissed", "RetryRequested"]
    assert db.last_event("RetryRequested")["actor"] == "bo"  # type: ignore[index]


def test_published_keys_facts_and_the_ledger_at_once(db: StateDB) -> None:
    db.create_batch("b1", files("b1", "a2", "a1"))
    db.record_sighting("orders/a1.csv", 11, 5, "a1")  # the ledger took it under this path
    db.record_sighting("orders/x.csv", 11, 6, "a1")  # the same content under another name
    assert db.ingested_sightings() == {("orders/a1.csv", 11, 5)}
    assert [f.sha256 for f in db.files_by_batch()["b1"]] == ["a1", "a2"]
    before = db.progress_marker()
    db.start_run("k1", "prep", "b1")
    assert db.current_keys() == {}  # started, not succeeded
    db.finish_run("k1", "prep", "b1", 0.1, "out", None)
    assert db.current_keys() == {("prep", "b1"): "k1"}
    db.adopt_current("prep", "b1", "k0")  # a published output whose manifest names k0
    assert db.current_keys() == {}  # k0 never ran here
    db.adopt_current("prep", "b1", "k1")
    assert db.current_keys() == {("prep", "b1"): "k1"}
    assert db.progress_marker() != before
    assert db.fact("model_params") is None
    db.record_fact("model_params", "v1")
    db.record_fact("model_params", "v2")
    db.record_fact("model_paramsX", "other")
    db.record_fact("seen:a_b", "1")
    assert db.fact("model_params") == "v2"
    assert db.facts_with_prefix("seen:a_") == {"seen:a_b": "1"}  # '_' is no wildcard


def test_published_keys_read_as_asked(db: StateDB, monkeypatch: pytest.MonkeyPatch) -> None:
    n = CurrentKeys.MANY + 6
    for i in range(n):
        db.start_run(f"k{i}", "prep", f"b{i}")
        db.finish_run(f"k{i}", "prep", f"b{i}", 0.1, "out", None)
    db.start_run("bad", "features", "b0")
    db.finish_run("bad", "features", "b0", 0.1, None, "broken")
    whole: list[int] = []
    stages: list[str] = []
    monkeypatch.setattr(db, "current_keys", lambda: whole.append(1) or StateDB.current_keys(db))
    real_of = StateDB.current_keys_of
    monkeypatch.setattr(db, "current_keys_of", lambda s: stages.append(s) or real_of(db, s))
    current = CurrentKeys(db)
    assert current.get(("prep", "b0")) == "k0" and ("features", "b0") not in current
    current[("features", "b1")] = "new"  # what the runner writes through after a run
    del current[("prep", "b1")]  # ... and after a run that failed
    assert ("prep", "b1") not in current and current[("features", "b1")] == "new"
    assert whole == [] and stages == []  # a few asked: a row each
    for i in range(n):
        current.get(("prep", f"b{i}"))
    assert stages == ["prep"] and whole == []  # many of one stage asked: its rows, once
    assert current.get(("prep", f"b{n - 1}")) == f"k{n - 1}"
    assert ("prep", "b1") not in current  # what was written through wins over the read
    assert current[("features", "b1")] == "new"  # written through, kept over the read
    assert current.get(("features", "b0")) is None  # another stage: still a row each
    assert stages == ["prep"]
    assert len(current) == n and whole == [1]  # every key asked: the whole table
    assert dict(current) == {
        **{("prep", f"b{i}"): f"k{i}" for i in range(n) if i != 1},
        ("features", "b1"): "new",
    }


# -- promotions ----------------------------------------------------------------------------


def decision(version: str, kind: str = "promoted") -> dict[str, Any]:
    return {
        "model": "shop",
        "version": version,
        "decision": kind,
        "reason": f"{kind} {version}",
        "metric": "roc_auc",
        "challenger_score": 0.8,
        "champion_version": None,
        "champion_score": None,
        "baseline_score": 0.5,
        "actor": "loop",
    }


def test_promotion_decisions(db: StateDB) -> None:
    one = db.record_decision(decision("1"))
    two = db.record_decision(decision("2"), applied=False)
    rejected = db.record_decision(decision("3", "rejected"))
    assert one < two < rejected
    assert db.applied_champion("shop") == "1"
    assert [d["id"] for d in db.unapplied("shop")] == [two]
    assert list(db.unapplied("shop")[0]) == [c.name for c in promotions.columns]
    db.mark_applied(two)
    assert db.applied_champion("shop") == "2" and db.unapplied("shop") == []
    moved = db.last_event("ChampionMoved")
    assert moved is not None and moved["version"] == "2" and moved["model"] == "shop"
    four = db.record_decision(decision("4"), applied=False)
    db.withdraw(four, "the registry refused")
    five = db.record_decision(decision("5"), applied=False)
    db.mark_superseded(five)
    assert [d["version"] for d in db.decisions("shop")] == ["1", "2", "3", "4", "5"]
    assert [d["version"] for d in db.decisions("shop", effective=True)] == ["1", "2", "3"]
    assert db.decision_for("shop", "2") == {
        "ts": db.decisions("shop")[1]["ts"],
        "decision": "promoted",
        "reason": "promoted 2",
        "actor": "loop",
    }
    assert db.decision_for("shop", "3") is None  # rejected: never champion
    assert db.decision_for("shop", "4") is None  # withdrawn
    types = [e["type"] for e in db.events()]
    assert types.count("ModelPromoted") == 4 and types.count("PromotionRejected") == 1
    assert db.last_event("PromotionWithdrawn")["decision_id"] == four  # type: ignore[index]


def test_results_are_plain_json(db: StateDB) -> None:
    """What the API and the server send as JSON (orjson refuses a str subclass as a key)."""
    import orjson

    db.create_batch("b1", files("b1", "a1"))
    db.start_run("k1", "prep", "b1")
    db.finish_run("k1", "prep", "b1", 0.5, "out", None)
    db.record_decision(decision("1"))
    db.take_lease("loop", "a", 1, "h", seconds=10, now=100.0)
    results: list[Any] = [
        db.run_info("k1"),
        db.last_succeeded("prep"),
        *db.stage_runs(),
        *db.decisions("shop"),
        db.decision_for("shop", "1"),
        db.lease("loop"),
        *db.events(),
        db.last_event("DataArrived"),
    ]
    for result in results:
        assert isinstance(result, dict) and all(type(k) is str for k in result), result
        orjson.dumps(result)


# -- events --------------------------------------------------------------------------------


def test_event_log(db: StateDB) -> None:
    assert db.last_event_id() == 0 and db.events() == [] and db.last_event("X") is None
    for i in range(5):
        db.record_event("Ping" if i % 2 == 0 else "Pong", {"i": i, "when": Path("p")})
    ids = [e["id"] for e in db.events()]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [e["i"] for e in db.events(limit=2)] == [3, 4]  # the newest, oldest first
    assert [e["i"] for e in db.events_after(ids[1])] == [2, 3, 4]
    assert [e["i"] for e in db.events_after(0, ("Pong",))] == [1, 3]
    assert db.last_event_id() == ids[-1] and db.last_event_id(("Pong",)) == ids[3]
    assert db.last_event("Ping")["i"] == 4  # type: ignore[index]
    assert db.events()[0]["when"] == "p"  # payloads are JSON, with str() for the rest


# -- the project lease ---------------------------------------------------------------------


def test_lease(db: StateDB) -> None:
    assert db.take_lease("loop", "a", 1, "h", seconds=10, now=100.0) is None
    acquired = db.lease("loop")["acquired_at"]  # type: ignore[index]
    held = db.take_lease("loop", "b", 2, "h", seconds=10, now=105.0)
    assert held is not None and held["holder"] == "a" and held["expires_at"] == 110.0
    assert db.take_lease("loop", "a", 1, "h", seconds=10, now=106.0) is None  # renewed
    assert db.lease("loop") == {
        "holder": "a",
        "pid": 1,
        "host": "h",
        "acquired_at": acquired,
        "expires_at": 116.0,
    }
    assert db.take_lease("loop", "b", 2, "h", seconds=10, now=116.0) is None  # expired: taken
    assert db.take_lease("loop", "c", 3, "h", seconds=10, now=117.0, replace="b") is None
    db.drop_lease("loop", "b")  # not the holder: nothing happens
    assert db.lease("loop")["holder"] == "c"  # type: ignore[index]
    db.drop_lease("loop", "c")
    assert db.lease("loop") is None


# -- claims --------------------------------------------------------------------------------


def test_claims(db: StateDB) -> None:
    assert db.claimant("prep:b1", now=100.0) is None
    assert db.claim("prep:b1", "w1", seconds=10, now=100.0)
    assert not db.claim("prep:b1", "w2", seconds=10, now=101.0)
    held = db.claimant("prep:b1", now=101.0)
    assert isinstance(held, Claim) and held.holder == "w1" and held.expires_at == 110.0
    assert db.claim("prep:b1", "w1", seconds=10, now=102.0)  # its holder again: extended
    again = db.claimant("prep:b1", now=102.0)
    assert again is not None and again.expires_at == 112.0 and again.acquired_at == held.acquired_at
    assert db.renew("prep:b1", "w1", seconds=20, now=103.0)
    assert not db.renew("prep:b1", "w2", seconds=20, now=103.0)
    assert not db.release("prep:b1", "w2")  # the wrong holder: nothing happens
    assert db.claimant("prep:b1", now=104.0).holder == "w1"  # type: ignore[union-attr]
    assert db.release("prep:b1", "w1")
    assert db.claimant("prep:b1", now=104.0) is None
    assert db.claim("prep:b1", "w2", seconds=10, now=105.0)


def test_an_expired_claim_is_taken_over(db: StateDB) -> None:
    assert db.claim("train", "w1", seconds=10, now=100.0)
    assert not db.claim("train", "w2", seconds=10, now=109.999)
    assert db.claimant("train", now=110.0) is None  # expired, not yet taken
    assert db.renew("train", "w1", seconds=10, now=111.0)  # nobody took it: still w1's
    assert db.claim("train", "w2", seconds=10, now=121.0)  # expired at 121: taken over
    taken = db.claimant("train", now=121.0)
    assert taken is not None and taken.holder == "w2" and taken.expires_at == 131.0
    assert not db.renew("train", "w1", seconds=10, now=122.0)  # w1 learns it lost the unit
    assert not db.release("train", "w1")
    assert db.claimant("train", now=122.0).holder == "w2"  # type: ignore[union-attr]


def test_claims_listing(db: StateDB) -> None:
    db.claim("prep:b1", "w1", seconds=10, now=100.0)
    db.claim("prep:b2", "w2", seconds=1, now=100.0)
    db.claim("features:b1", "w1", seconds=10, now=100.0)
    db.claim("prep_x", "w3", seconds=10, now=100.0)  # '_' is not a LIKE wildcard here
    assert [c.unit for c in db.claims(now=100.5)] == [
        "features:b1",
        "prep:b1",
        "prep:b2",
        "prep_x",
    ]
    assert [c.unit for c in db.claims(now=105.0, prefix="prep:")] == ["prep:b1"]


def test_claims_from_many_threads_never_overlap(target: tuple[Path, str | None]) -> None:
    path, url = target
    inside, most, wins, violations = [0], [0], [0] * 4, []
    lock = threading.Lock()
    start = threading.Barrier(4, timeout=GUARD)

    def worker(n: int) -> None:
        with StateDB(path, url=url) as db:
            start.wait()
            for _ in range(40):
                if not db.claim("train", f"w{n}", seconds=3600, now=1000.0):
                    continue
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    if inside[0] > 1:
                        violations.append(n)
                holder = db.claimant("train", now=1000.0)
                if holder is None or holder.holder != f"w{n}":
                    violations.append(n)
                with lock:
                    inside[0] -= 1
                wins[n] += 1
                assert db.release("train", f"w{n}")

    with StateDB(path, url=url):
        pass  # the schema exists before the threads race
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    assert not any(t.is_alive() for t in threads)
    assert violations == [] and most[0] == 1 and sum(wins) >= 1


def _claim_units(db: StateDB, me: str) -> list[int]:
    return [u for u in range(30) if db.claim(f"prep:{u}", me, seconds=3600, now=1.0)]


def _make_batches(db: StateDB, me: str) -> list[int]:
    return [
        db.create_batch(f"{me}-{i:02d}", files(f"{me}-{i:02d}", f"{me}{i}")).seq for i in range(15)
    ]


def _child(fn: Any, path: Path, url: str | None, me: str, start: Any, out: Any) -> None:
    try:
        with StateDB(path, url=url) as db:
            start.wait(GUARD)
            out.put((me, fn(db, me)))
    except BaseException as exc:  # the parent reports it instead of waiting for a result
        out.put((me, f"{type(exc).__name__}: {exc}"))
        raise


def _in_two_processes(fn: Any, path: Path, url: str | None) -> dict[str, list[int]]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(fn, path, url, me, start, out)) for me in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=GUARD) for _ in procs)
    for p in procs:
        p.join(GUARD)
    assert all(isinstance(r, list) for r in results.values()), results
    assert [p.exitcode for p in procs] == [0, 0]
    return results


def test_two_processes_claim_each_unit_once(target: tuple[Path, str | None]) -> None:
    path, url = target
    with StateDB(path, url=url):
        pass
    won = _in_two_processes(_claim_units, path, url)
    assert set(won["p1"]).isdisjoint(won["p2"])
    assert sorted(won["p1"] + won["p2"]) == list(range(30))


def test_two_processes_number_batches_uniquely(target: tuple[Path, str | None]) -> None:
    path, url = target
    with StateDB(path, url=url):
        pass
    seqs = _in_two_processes(_make_batches, path, url)
    every = seqs["p1"] + seqs["p2"]
    assert len(set(every)) == 30
    for mine in seqs.values():
        assert mine == sorted(mine)  # each writer's batches in the order it made them
    with StateDB(path, url=url) as db:
        by_seq = [b.batch_id for b in db.batches()]
        assert [b.seq for b in db.batches()] == sorted(every)
        # event ids follow commit order: DataArrived events are in the batches' order
        assert [e["batch_id"] for e in db.events_after(0, ("DataArrived",))] == by_seq


# -- URLs, the spec, and passwords ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nothing listens


def test_an_unreachable_server_never_shows_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://driftloop:Hunter2-secret@127.0.0.1:{_closed_port()}/state"
    with pytest.raises(StateError) as info:
        StateDB(tmp_path / "unused.db", url=url)
    message = str(info.value)
    assert "cannot use the state database" in message and "driftloop:***@127.0.0.1" in message
    shown = "".join(traceback.format_exception(info.value)) + message + caplog.text
    assert "Hunter2-secret" not in shown


def test_a_wrong_password_is_not_shown_either(postgres_url: str, tmp_path: Path) -> None:
    wrong = postgres_url.replace(PASSWORD, "Not-the-password-9")
    with pytest.raises(StateError) as info:
        StateDB(tmp_path / "unused.db", url=wrong)
    assert "password authentication failed" in str(info.value)
    assert "Not-the-password-9" not in "".join(traceback.format_exception(info.value))


def test_a_live_database_shows_no_password(postgres_url: str, tmp_path: Path) -> None:
    with StateDB(tmp_path / "unused.db", url=postgres_url) as db:
        db.record_event("Ping", {})
        assert PASSWORD not in db.where + repr(db) + str(db.url) + repr(db._engine)
        assert "postgres:***@127.0.0.1" in db.where


def test_which_url(tmp_path: Path) -> None:
    path = tmp_path / ".driftloop" / "state.db"
    env = {STATE_URL_ENV: "postgresql://env@db1/state"}
    assert resolve_url(path, None, {}).database == str(path)
    assert resolve_url(path, None, env).host == "db1"
    assert resolve_url(path, "postgresql://spec@db2/state", env).host == "db2"  # spec wins
    assert resolve_url(path, None, env).drivername == "postgresql+psycopg"
    assert resolve_url(path, "postgresql+psycopg2://u@h/d").drivername == "postgresql+psycopg2"
    with pytest.raises(StateError, match="must be SQLite or PostgreSQL") as info:
        resolve_url(path, "mysql://u:pw-in-mysql@h/d")
    assert "pw-in-mysql" not in str(info.value)
    with pytest.raises(StateError, match="not a database URL") as info:
        resolve_url(path, None, {STATE_URL_ENV: "postgresql://u:pw-bad@h:notaport/d"})
    assert "pw-bad" not in str(info.value)


def test_the_environment_opens_the_server(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_URL_ENV, postgres_url)
    with StateDB(tmp_path / ".driftloop" / "state.db") as db:
        db.record_event("Ping", {})
        assert db.url.get_backend_name() == "postgresql"
    assert not (tmp_path / ".driftloop" / "state.db").exists()


def spec_with(state: Any) -> dict[str, Any]:
    return {
        "name": "shop",
        "task": "classification",
        "target": "y",
        "sources": [{"name": "orders", "path": "data/raw/orders/*.csv"}],
        "contract": {"columns": {"y": {"dtype": "int"}}},
        "state": state,
    }


def test_the_spec_state_section() -> None:
    assert parse_spec(spec_with(None)).state.url is None
    url = "postgresql://driftloop@db.internal:5432/state"
    assert parse_spec(spec_with({"url": url})).state.url == url
    with pytest.raises(SpecError, match=r"unknown key 'uri' in state; did you mean 'url'"):
        parse_spec(spec_with({"uri": url}))
    with pytest.raises(SpecError, match="must start with postgresql://"):
        parse_spec(spec_with({"url": "mysql://db/state"}))
    with pytest.raises(SpecError, match="holds a password") as info:
        parse_spec(spec_with({"url": "postgresql://driftloop:Spec-secret@db/state"}))
    assert "Spec-secret" not in str(info.value) and "driftloop:***@db" in str(info.value)


# -- an existing database ------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE raw_files (sha256 TEXT PRIMARY KEY, source TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, batch_id TEXT NOT NULL, ingested_at TEXT NOT NULL);
CREATE TABLE batches (batch_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
    created_at TEXT NOT NULL);
CREATE TABLE promotions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL,
    metric TEXT, challenger_score REAL, champion_version TEXT, champion_score REAL,
    baseline_score REAL, actor TEXT NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL,
    type TEXT NOT NULL, payload TEXT NOT NULL);
INSERT INTO batches VALUES ('old', 1, '2026-01-01T00:00:00+00:00');
INSERT INTO raw_files VALUES ('o1', 'orders', 'orders/o.csv', 5, 'old', '2026-01-01');
INSERT INTO promotions (ts, model, version, decision, reason, actor)
    VALUES ('2026-01-01', 'shop', '1', 'promoted', 'first model', 'loop');
INSERT INTO events (ts, type, payload) VALUES ('2026-01-01', 'DataArrived', '{"batch_id": "old"}');
INSERT INTO events (ts, type, payload) VALUES ('2026-01-01', 'Gone', '{}');
DELETE FROM events WHERE type = 'Gone';
"""


def test_an_existing_sqlite_database_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / ".driftloop" / "state.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:  # made by an older driftloop, before ``applied``
        conn.executescript(OLD_SCHEMA)
    conn.close()
    with StateDB(path) as db:
        assert db.applied_champion("shop") == "1"  # the migration: old decisions were applied
        assert db.batches()[0].batch_id == "old" and db.raw_file("o1") is not None
        assert db.create_batch("new", files("new", "n1")).seq == 2
        assert db.last_event_id() == 3  # id 2 was deleted and is never given again
        with db.transaction() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            assert isinstance(conn, sa.Connection) and mode == "wal"


# -- a real pass on the server -------------------------------------------------------------

TINY = """
name: tiny
task: regression
target: y
sources:
  - name: s
    path: data/raw/s/*.csv
contract:
  columns:
    x: {dtype: float, min: 0}
    y: {dtype: float}
ingest: {settle_seconds: 0}
model: {enabled: false}
state: {url: "URL"}
"""


def test_a_pass_keeps_its_state_on_the_spec_s_server(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftloop.orchestration.status import project_status
    from driftloop.pipeline import run

    from .helpers import write_spec

    url = sa.make_url(postgres_url)
    monkeypatch.setenv("PGPASSWORD", str(url.password))  # libpq's, as the spec asks
    # the spec wins over the environment, which names somewhere that does not answer
    monkeypatch.setenv(STATE_URL_ENV, f"postgresql://nobody@127.0.0.1:{_closed_port()}/x")
    spec_url = f"postgresql://postgres@127.0.0.1:{url.port}/{url.database}"  # no password
    write_spec(tmp_path, TINY.replace("URL", spec_url))
    raw = tmp_path / "data" / "raw" / "s"
    raw.mkdir(parents=True)
    (raw / "a.csv").write_text("x,y\n1,2\n3,4\n-1,5\n")
    first = run(tmp_path)
    assert first.ingest.batch is not None and first.did_work
    assert run(tmp_path).ingest.batch is None  # the ledger on the server knows the file
    assert not (tmp_path / ".driftloop" / "state.db").exists()
    with StateDB(tmp_path / "unused.db", url=postgres_url) as db:
        assert [b.batch_id for b in db.batches()] == [first.ingest.batch.batch_id]
        assert {r["stage"]: r["status"] for r in db.stage_runs()} == {
            "prep": "succeeded",
            "features": "succeeded",
        }
        assert db.lease("watch") is None  # the pass's lease was taken there, and dropped
        assert db.last_event("StageStarted") is not None
    assert project_status(tmp_path)["batches"]
