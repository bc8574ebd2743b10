"""``driftloop watch`` and ``driftloop up`` as real processes: files flow through by themselves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import polars as pl
import pytest

from driftloop.core.layout import Layout
from driftloop.core.state import StateDB
from driftloop.serving.client import free_port

from .helpers import write_spec
from .test_lifecycle import SPEC, land

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "driftloop.cli"]
HANG_GUARD = 600.0  # seconds
QUICK = """
monitoring: {permutations: 199}
serving: {workers: 1, events_poll_seconds: 0.1, poll_seconds: 2}
"""


def start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CLI, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    # a hang guard, generous on a busy machine: ``timeout`` is what a quiet one needs
    deadline = time.monotonic() + max(timeout, HANG_GUARD)
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def settled(project: Path) -> bool:
    layout = Layout(project)
    if not layout.state_db.exists():
        return False
    with StateDB(layout.state_db) as db:
        return db.fact("settled") is not None


def succeeded(project: Path, stage: str) -> int:
    layout = Layout(project)
    if not layout.state_db.exists():
        return 0
    with StateDB(layout.state_db) as db:
        return sum(
            1
            for r in db.stage_runs(limit=1000)
            if r["stage"] == stage and r["status"] == "succeeded"
        )


def test_files_flow_through_a_second_watch_refuses_and_sigterm_stops(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + QUICK)
    log = tmp_path / "watch.log"
    watcher = start("watch", "-p", str(tmp_path), "--interval", "0.2", log=log)
    try:
        land(tmp_path, "a.csv", 600, seed=1)
        wait_for(lambda: succeeded(tmp_path, "train") == 1, 90, "the first model", log)

        second = subprocess.run(
            [*CLI, "watch", "-p", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
        )
        assert second.returncode == 2
        assert "another driftloop process holds this project" in second.stderr
        by_hand = subprocess.run(
            [*CLI, "run", "-p", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
        )
        assert by_hand.returncode == 2 and "stop it first" in by_hand.stderr

        land(tmp_path, "b.csv", 600, seed=2, start_day=5)
        wait_for(lambda: succeeded(tmp_path, "train") == 2, 90, "a second training", log)
        # every batch trains (the default policy), so the check of the new batch against the
        # champion it arrived under follows the training
        wait_for(lambda: succeeded(tmp_path, "monitor") == 1, 60, "the check", log)
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(HANG_GUARD) == 0
    out = log.read_text()
    assert "stopped after" in out and "PROMOTED: first model" in out
    with StateDB(Layout(tmp_path).state_db) as db:
        assert db.lease("watch") is None  # released on a clean stop
        reasons = [e["reason"] for e in db.events(200) if e["type"] == "RetrainRequested"]
    assert reasons[0] == "first model" and len(reasons) == 2


def test_a_poison_batch_is_quarantined_and_the_loop_goes_on(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + QUICK + "model: {enabled: false}\n")
    folder = tmp_path / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    poison = pl.DataFrame(
        {"t": ["never"] * 50, "x1": ["a"] * 50, "x2": [1.0] * 50, "c": ["a"] * 50, "y": ["no"] * 50}
    )
    poison.write_csv(folder / "poison.csv")
    done = subprocess.run(
        [*CLI, "watch", "-p", str(tmp_path), "--until-idle", "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert "FAILED prep" in done.stdout and "max_bad_share" in done.stdout
    assert (tmp_path / "data" / "quarantine").is_dir()
    land(tmp_path, "good.csv", 300, seed=3)
    again = subprocess.run(
        [*CLI, "watch", "-p", str(tmp_path), "--until-idle", "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert again.returncode == 0, again.stderr
    assert succeeded(tmp_path, "features") == 1  # the good batch went through
    with StateDB(Layout(tmp_path).state_db) as db:
        failed = [r for r in db.stage_runs(limit=100) if r["status"] == "failed"]
    assert [r["stage"] for r in failed] == ["prep"]  # the poison batch, not retried


def test_up_runs_the_loop_and_the_server_together(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC + QUICK)
    land(tmp_path, "a.csv", 600, seed=1)
    port = free_port()
    log = tmp_path / "up.log"
    up = start("up", "-p", str(tmp_path), "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}"
    record = {"t": "2024-01-05 10:00:00", "x1": 0.3, "x2": -1.2, "c": "b"}

    def served(version: str) -> bool:
        try:
            answer = httpx.post(f"{url}/predict", json=record, timeout=5)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json()["model"]["version"] == version

    try:
        wait_for(lambda: served("1"), 120, "v1 served", log)
        land(tmp_path, "b.csv", 600, seed=2, start_day=5)
        with StateDB(Layout(tmp_path).state_db) as db:
            before = db.last_event_id(("ModelPromoted", "PromotionRejected"))

        def decided() -> bool:
            with StateDB(Layout(tmp_path).state_db) as db:
                return db.last_event_id(("ModelPromoted", "PromotionRejected")) > before

        wait_for(decided, 120, "the second model's gate", log)
        with StateDB(Layout(tmp_path).state_db) as db:
            last = db.last_event("ModelPromoted")
        assert last is not None
        wait_for(lambda: served(str(last["version"])), 30, "the champion served", log)
        # a child that dies is started again by the supervisor
        serve_pid = int(re.findall(r"started serve \(pid (\d+)\)", log.read_text())[-1])
        os.kill(serve_pid, signal.SIGKILL)
        wait_for(lambda: log.read_text().count("started serve") == 2, 30, "serve restarted", log)
        wait_for(lambda: served(str(last["version"])), 60, "answers after the restart", log)
        assert "serve exited with code -9; starting it again" in log.read_text()
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    out = log.read_text()
    assert "started watch" in out and "started serve" in out
    assert "stopped watch" in out and "stopped serve" in out


def test_a_file_renamed_into_place_is_taken_without_the_settle_wait(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC.replace("settle_seconds: 0", "settle_seconds: 900") + QUICK)
    # The source's folder exists before the watcher starts: a folder created later is
    # watched only once the OS reports it, and a file written and renamed inside it before
    # then is reported as created, not as renamed (it waits out settle_seconds, losing
    # nothing). Under load that came first: the rename this test is about went unseen.
    folder = tmp_path / "data" / "raw" / "s"
    folder.mkdir(parents=True)
    log = tmp_path / "watch.log"
    watcher = start("watch", "-p", str(tmp_path), "--interval", "5", log=log)
    try:
        # the watcher is listening once its first pass (on an empty project) has settled
        wait_for(lambda: settled(tmp_path), 60, "the first pass", log)
        land(tmp_path, ".a.csv.tmp", 300, seed=1)  # written under a temporary name ...
        landed = time.monotonic()
        (folder / ".a.csv.tmp").rename(folder / "a.csv")  # ... and renamed: complete
        wait_for(lambda: succeeded(tmp_path, "prep") == 1, 600, "prep of a renamed file", log)
        assert time.monotonic() - landed < 600  # it did not wait out settle_seconds (900)
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(600) == 0  # it stops after the pass under way (a training)


def test_without_file_notifications_the_loop_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the OS cannot notify (no inotify watches left, say), passes come on a timer."""
    import threading

    import watchdog.observers

    from driftloop.orchestration.watch import Watcher

    class Broken:
        def __init__(self) -> None:
            raise OSError("inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Broken)
    write_spec(tmp_path, SPEC + "model: {enabled: false}\n")
    watcher = Watcher(tmp_path, interval=0.2)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        land(tmp_path, "a.csv", 200, seed=1)
        wait_for(lambda: succeeded(tmp_path, "features") == 1, 60, "a polled pass")
        assert watcher.state.notifications == "polling every 0.2s"
    finally:
        watcher.stop.set()
        watcher.wake()
        thread.join(30)


def test_status_reports_the_champion_pending_work_and_the_loop(tmp_path: Path) -> None:
    import json

    write_spec(tmp_path, SPEC + QUICK + "retrain: {every_batches: 2}\n")
    land(tmp_path, "a.csv", 600, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*CLI, "run", "-p", str(tmp_path)], check=True, env=env, capture_output=True)
    land(tmp_path, "b.csv", 600, seed=2, start_day=5)
    subprocess.run([*CLI, "run", "-p", str(tmp_path)], check=True, env=env, capture_output=True)
    land(tmp_path, "c.csv", 600, seed=3, start_day=9)  # landed, not ingested
    out = subprocess.run(
        [*CLI, "status", "-p", str(tmp_path), "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    status = json.loads(out.stdout)
    assert status["champion"]["version"] == "1"
    assert status["watch"] is None  # no watcher running
    assert status["batches"] == 2
    pending = status["pending"]
    assert len(pending["batches_since_last_training"]) == 1  # the policy waits for a second
    assert pending["files_not_ingested"] == ["data/raw/s/c.csv"]
    assert status["last_drift_verdict"]["model_version"] == "1"  # batch b was checked
    assert {e["type"] for e in status["events"]} >= {"DataArrived", "ModelPromoted"}
    text = subprocess.run(
        [*CLI, "status", "-p", str(tmp_path)], check=True, env=env, capture_output=True, text=True
    ).stdout
    assert "champion: synth v1" in text and "watch: not running" in text


def test_the_loop_monitors_the_prediction_log_on_its_schedule(tmp_path: Path) -> None:
    import json
    import threading

    from driftloop.orchestration.watch import Watcher

    from .serving_helpers import record, serving, synthetic_project

    extra = """
serving: {workers: 1, poll_seconds: 2, events_poll_seconds: 0.1, log: {flush_seconds: 0.3}}
monitoring: {permutations: 199, schedule_minutes: 0.01}
"""
    project = synthetic_project(tmp_path / "p", versions=1, extra=extra)
    with serving(project) as running, running.client() as client:
        for i in range(60):
            assert client.post("/predict", json=record(x1=i / 30)).status_code == 200
    watcher = Watcher(project, interval=0.2)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: "monitored the prediction log" in (watcher.state.last_work or ""),
            90,
            "a scheduled check of the prediction log",
        )
    finally:
        watcher.request_stop()
        thread.join(30)
    reports = sorted((project / "data" / "monitoring" / "reports").glob("*.json"))
    kinds = [json.loads(r.read_text())["current"]["kind"] for r in reports]
    assert "prediction_log" in kinds


def test_a_failing_pass_does_not_stop_the_loop(tmp_path: Path) -> None:
    """A spec broken in place while the loop runs: the pass fails, the loop reports it and
    goes on, and picks up again once the spec is fixed."""
    import threading

    from driftloop.orchestration.watch import Watcher

    good = SPEC + "model: {enabled: false}\n"
    write_spec(tmp_path, good)
    watcher = Watcher(tmp_path, interval=0.2)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: watcher.state.passes >= 1, 60, "a first pass")
        (tmp_path / "driftloop.yaml").write_text(good.replace("target: y", "targte: y"))
        land(tmp_path, "a.csv", 200, seed=1)
        wait_for(lambda: "driftloop.yaml" in (watcher.state.last_error or ""), 60, "the failure")
        assert thread.is_alive()
        (tmp_path / "driftloop.yaml").write_text(good)
        watcher.wake()
        wait_for(lambda: succeeded(tmp_path, "features") == 1, 60, "the loop picking up again")
        assert watcher.state.last_error is None
    finally:
        watcher.request_stop()
        thread.join(30)
