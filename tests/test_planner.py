"""The pass planner (pure): the project's facts in, the stage calls a pass must make out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from driftloop.core.spec import Spec, parse_spec
from driftloop.core.stage import StageCall
from driftloop.orchestration.planner import BatchFacts, Facts, Plan, plan

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def spec(**sections: Any) -> Spec:
    base: dict[str, Any] = {
        "name": "p",
        "task": "classification",
        "target": "y",
        "sources": [{"name": "s", "path": "data/raw/s/*.csv"}],
        "contract": {"columns": {"x": {"dtype": "float"}, "y": {"dtype": "str"}}},
    }
    return parse_spec({**base, **sections})


def batch(name: str, *, prepped: bool = True, featured: bool = True, **more: Any) -> BatchFacts:
    return BatchFacts(name, NOW - timedelta(hours=1), prepped, featured, rows=10, **more)


def calls(found: Plan) -> list[list[str]]:
    return [[str(c) for c in wave] for wave in found.waves]


def test_batches_not_current_get_prep_then_features_and_nothing_else_yet() -> None:
    facts = Facts(
        (batch("a"), batch("b", prepped=False, featured=False), batch("c", featured=False))
    )
    assert calls(plan(spec(), facts, NOW)) == [
        ["prep --batch b"],
        ["features --batch b", "features --batch c"],
    ]


def test_every_output_current_and_no_model_is_an_empty_plan() -> None:
    facts = Facts((batch("a"), batch("b")))
    assert plan(spec(model={"enabled": False}), facts, NOW).waves == []


def test_the_first_model_is_trained_with_its_reason() -> None:
    found = plan(spec(), Facts((batch("a"),)), NOW)
    assert found.waves == [[StageCall("train", reason="first model")], [StageCall("promote")]]


def test_a_new_batch_is_checked_first_when_the_verdict_can_decide() -> None:
    trained = Facts(
        (batch("a"), batch("b")),
        champion="1",
        trained=frozenset({"a"}),
        trained_before=True,
        last_trained_at=NOW - timedelta(hours=3),
    )
    s = spec(retrain={"every_batches": 3})
    assert calls(plan(s, trained, NOW)) == [["monitor --batch b --champion 1"]]
    # checked, nothing found: the policy waits, and says why
    quiet = Facts((batch("a"), batch("b", checked_against=frozenset({"1"}))), **_trained_facts())
    waiting = plan(s, quiet, NOW)
    assert waiting.waves == [] and "1 new batch(es)" in str(waiting.waiting)
    # checked, drift found: train now
    drifted = Facts(
        (batch("a"), batch("b", checked_against=frozenset({"1"}), drift=True)),
        **_trained_facts(),
    )
    (train, promote) = plan(s, drifted, NOW).waves
    assert train[0].stage == "train" and "drift detected" in str(train[0].reason)
    assert promote == [StageCall("promote")]


def test_when_the_policy_trains_anyway_the_check_follows_against_the_old_champion() -> None:
    facts = Facts((batch("a"), batch("b")), **_trained_facts())
    found = plan(spec(retrain={"every_batches": 1}), facts, NOW)
    assert calls(found) == [["train"], ["promote"], ["monitor --batch b --champion 1"]]
    assert found.waves[0][0].reason is not None


def test_a_batch_without_rows_is_not_checked() -> None:
    facts = Facts((batch("a"), BatchFacts("b", NOW, True, True, rows=0)), **_trained_facts())
    assert plan(spec(retrain={"every_batches": 3}), facts, NOW).waves == []


def test_a_training_that_failed_on_these_features_is_reported_not_retried() -> None:
    found = plan(spec(), Facts((batch("a"),), training="failed"), NOW)
    assert found.waves == [[StageCall("train")]]  # the runner answers failed-earlier


def test_a_training_that_succeeded_on_these_features_is_not_planned_again() -> None:
    facts = Facts((batch("a"),), **{**_trained_facts(), "trained": frozenset({"a"})})
    assert plan(spec(), Facts(facts.batches, training="succeeded"), NOW).waves == []


def test_the_plan_is_json_for_orchestrators() -> None:
    found = plan(spec(), Facts((batch("b", prepped=False, featured=False),)), NOW)
    assert found.to_json() == {
        "waves": [
            [{"stage": "prep", "batch_id": "b"}],
            [{"stage": "features", "batch_id": "b"}],
        ],
        "waiting": None,
    }


def _trained_facts() -> dict[str, Any]:
    return {
        "champion": "1",
        "trained": frozenset({"a"}),
        "trained_before": True,
        "last_trained_at": NOW - timedelta(hours=3),
    }


def test_a_training_not_decided_yet_goes_to_the_gate_first() -> None:
    facts = Facts((batch("a"), batch("b")), **_trained_facts(), undecided=True)
    assert plan(spec(retrain={"every_batches": 1}), facts, NOW).waves == [[StageCall("promote")]]


def test_a_drift_or_decay_the_prediction_log_monitor_found_retrains_on_new_data() -> None:
    # one new batch, checked against the champion and found ordinary: the policy waits ...
    quiet = (batch("a"), batch("b", checked_against=frozenset({"1"})))
    s = spec(retrain={"every_batches": 3})
    assert plan(s, Facts(quiet, **_trained_facts()), NOW).waves == []
    # ... until the scheduled monitor finds drift (or decay) in the prediction log: then the
    # same rule as a batch check's finding trains, first, without waiting for a check
    for found, word in (({"log_drift": True}, "drift"), ({"log_decay": True}, "performance")):
        facts = Facts(quiet, **_trained_facts(), **found)
        (train, promote) = plan(s, facts, NOW).waves
        assert train[0].stage == "train" and promote == [StageCall("promote")]
        assert str(train[0].reason).startswith(word) and "prediction log" in str(train[0].reason)
    unchecked = Facts((batch("a"), batch("b")), **_trained_facts(), log_drift=True)
    assert calls(plan(s, unchecked, NOW)) == [
        ["train"],
        ["promote"],
        ["monitor --batch b --champion 1"],
    ]
    # the policy's switches hold for it too
    off = spec(retrain={"every_batches": 3, "on_drift": False})
    assert plan(off, Facts(quiet, **_trained_facts(), log_drift=True), NOW).waves == []


def test_a_log_finding_with_no_new_batch_waits_and_says_why() -> None:
    for training in (None, "succeeded"):  # the training over these very batches is done
        trained = Facts((batch("a"),), **_trained_facts(), log_decay=True, training=training)
        found = plan(spec(retrain={"every_batches": 3}), trained, NOW)
        assert found.waves == []
        assert "prediction-log monitor found decay against v1" in str(found.waiting)
        assert "nothing new to learn from" in str(found.waiting)
