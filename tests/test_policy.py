"""The retrain policy (pure) and the loop's retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftloop.core.errors import QuarantineLimitError
from driftloop.core.layout import Layout, seal
from driftloop.core.spec import RetrainSpec
from driftloop.core.stage import Work
from driftloop.core.state import StateDB
from driftloop.core.state_store import stage_runs
from driftloop.orchestration.policy import Situation, retrain_reason
from driftloop.orchestration.runner import MAX_ATTEMPTS, keyed_run

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def situation(**changes: object) -> Situation:
    base = {
        "trained_before": True,
        "spec_changed": False,
        "new_batches": 1,
        "new_data_since": NOW - timedelta(hours=1),
        "drift": False,
        "decay": False,
        "last_trained_at": NOW - timedelta(hours=2),
    }
    return Situation(**{**base, **changes})  # type: ignore[arg-type]


def test_nothing_new_trains_nothing_whatever_else_happened() -> None:
    policy = RetrainSpec(every_batches=1)
    assert retrain_reason(policy, situation(new_batches=0, drift=True, decay=True), NOW) is None
    assert retrain_reason(policy, situation(new_batches=0, spec_changed=True), NOW) is not None


def test_first_model_and_spec_changes_train_at_once() -> None:
    policy = RetrainSpec(every_batches=0, on_drift=False, on_decay=False)
    assert retrain_reason(policy, situation(trained_before=False), NOW) == "first model"
    assert "spec changed" in str(retrain_reason(policy, situation(spec_changed=True), NOW))
    assert retrain_reason(policy, situation(new_batches=5), NOW) is None  # static


def test_every_n_batches_unless_drift_or_decay_comes_first() -> None:
    policy = RetrainSpec(every_batches=3)
    assert retrain_reason(policy, situation(new_batches=2), NOW) is None
    assert "3 new batch(es)" in str(retrain_reason(policy, situation(new_batches=3), NOW))
    assert "drift detected" in str(retrain_reason(policy, situation(drift=True), NOW))
    assert "performance degraded" in str(
        retrain_reason(policy, situation(decay=True, drift=True), NOW)
    )
    quiet = RetrainSpec(every_batches=3, on_drift=False, on_decay=False)
    assert retrain_reason(quiet, situation(drift=True, decay=True), NOW) is None


def test_what_the_prediction_log_monitor_found_retrains_as_a_batch_check_would() -> None:
    policy = RetrainSpec(every_batches=3)
    log_drift = retrain_reason(policy, situation(log_drift=True), NOW)
    assert str(log_drift).startswith("drift detected in the prediction log")
    log_decay = retrain_reason(policy, situation(log_drift=True, log_decay=True), NOW)
    assert str(log_decay).startswith("performance degraded in the prediction log")
    # a batch's own finding is named first; nothing new to learn from: no training
    assert "on new data" in str(retrain_reason(policy, situation(drift=True, log_drift=True), NOW))
    assert retrain_reason(policy, situation(new_batches=0, log_decay=True), NOW) is None
    quiet = RetrainSpec(every_batches=3, on_drift=False, on_decay=False)
    assert retrain_reason(quiet, situation(log_drift=True, log_decay=True), NOW) is None
    cool = RetrainSpec(every_batches=3, cooldown_minutes=180)  # the cooldown holds for it too
    assert retrain_reason(cool, situation(log_decay=True), NOW) is None


def test_cooldown_and_schedule() -> None:
    cool = RetrainSpec(every_batches=1, cooldown_minutes=180)
    assert retrain_reason(cool, situation(decay=True), NOW) is None  # trained 2 h ago
    assert retrain_reason(cool, situation(last_trained_at=NOW - timedelta(hours=4)), NOW)
    hourly = RetrainSpec(every_batches=0, on_drift=False, on_decay=False, every_hours=6)
    assert retrain_reason(hourly, situation(), NOW) is None  # new data waited 1 h
    waited = situation(new_data_since=NOW - timedelta(hours=7))
    assert "waited 7.0 h" in str(retrain_reason(hourly, waited, NOW))


def test_transient_failures_back_off_and_give_up_validation_failures_do_not_retry(
    tmp_path: Path,
) -> None:
    layout = Layout(tmp_path)
    calls: list[str] = []

    def flaky(started: float) -> dict[str, object]:
        calls.append("flaky")
        raise OSError("disk hiccup")

    def invalid(started: float) -> dict[str, object]:
        calls.append("invalid")
        raise QuarantineLimitError("too many bad rows")

    with StateDB(layout.state_db) as db:
        out = tmp_path / "out"
        first = keyed_run(db, layout, "prep", Work("k-flaky", out, flaky, "b1"), backoff=True)
        assert first.outcome == "failed" and "retried" in str(first.error)
        again = keyed_run(db, layout, "prep", Work("k-flaky", out, flaky, "b1"), backoff=True)
        assert again.outcome == "waiting" and calls == ["flaky"]  # inside the 1 s backoff
        # without backoff (driftloop run) the next pass retries at once
        keyed_run(db, layout, "prep", Work("k-flaky", out, flaky, "b1"))
        assert calls == ["flaky", "flaky"]
        with db.transaction() as conn:
            conn.execute(
                stage_runs.update().where(stage_runs.c.key == "k-flaky"), {"attempts": MAX_ATTEMPTS}
            )
        gave_up = keyed_run(db, layout, "prep", Work("k-flaky", out, flaky, "b1"), backoff=True)
        assert gave_up.outcome == "failed-earlier" and "gave up after" in str(gave_up.error)

        bad = keyed_run(db, layout, "prep", Work("k-invalid", out, invalid, "b1"), backoff=True)
        assert bad.outcome == "failed"
        later = keyed_run(db, layout, "prep", Work("k-invalid", out, invalid, "b1"), backoff=True)
        assert later.outcome == "failed-earlier" and calls.count("invalid") == 1

        def fine(started: float) -> dict[str, object]:
            out.mkdir(exist_ok=True)
            manifest = {"run_key": "k-fine"}
            seal(out, manifest)
            return manifest

        assert keyed_run(db, layout, "prep", Work("k-fine", out, fine, "b1")).outcome == "ran"
        assert keyed_run(db, layout, "prep", Work("k-fine", out, fine, "b1")).outcome == "cached"


@pytest.mark.parametrize("every", [0, 1, 2])
def test_retrain_section_parses(every: int) -> None:
    from driftloop.core.spec import parse_spec, read_yaml

    from .test_lifecycle import SPEC

    spec = parse_spec(
        read_yaml(SPEC + f"retrain: {{every_batches: {every}, cooldown_minutes: 5}}\n")
    )
    assert spec.retrain.every_batches == every and spec.retrain.cooldown_minutes == 5
    assert parse_spec(read_yaml(SPEC + "retrain:\n")).retrain == RetrainSpec()
