"""``structured_scores``: JSON answers graded as parsed objects, per intent and per slot."""

from __future__ import annotations

import pytest

from registry.evaluation.metrics import parse_json_object, structured_scores

REF_A = '{"intent": "schedule_meeting", "slots": {"time": "15:45", "room": "G412"}}'
REF_B = '{"intent": "invite_participant", "slots": {"name": "王娜"}}'
REF_C = '{"intent": "share_screen", "slots": {}}'


def test_it_parses_only_a_json_object():
    assert parse_json_object(' {"a": 1} \n') == {"a": 1}
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object('{"intent": "x", "slots": {}') is None
    assert parse_json_object("") is None


def test_it_compares_parsed_objects_not_text():
    reordered = '{"slots":{"room":"G412","time":"15:45"},"intent":"schedule_meeting"}'
    scores = structured_scores([reordered], [REF_A])
    assert scores["json_exact_match"] == scores["valid_json"] == scores["intent_accuracy"] == 1.0


def test_it_scores_per_intent_and_per_slot():
    predictions = [
        '{"intent": "schedule_meeting", "slots": {"time": "15:45", "room": "G413"}}',  # room wrong
        '{"intent": "invite_participant", "slots": {"name": "王娜"}}',  # right
        '{"intent": "share_screen", "slots": {}',  # not JSON
    ]
    scores = structured_scores(predictions, [REF_A, REF_B, REF_C])
    assert scores["examples"] == 3
    assert scores["valid_json"] == pytest.approx(2 / 3)
    assert scores["json_exact_match"] == pytest.approx(1 / 3)
    assert scores["intent_accuracy"] == pytest.approx(2 / 3)
    assert scores["per_intent"] == {
        "invite_participant": {"examples": 1, "exact_match": 1.0, "intent_accuracy": 1.0},
        "schedule_meeting": {"examples": 1, "exact_match": 0.0, "intent_accuracy": 1.0},
        "share_screen": {"examples": 1, "exact_match": 0.0, "intent_accuracy": 0.0},
    }
    assert scores["per_slot"] == {
        "name": {"examples": 1, "accuracy": 1.0},
        "room": {"examples": 1, "accuracy": 0.0},
        "time": {"examples": 1, "accuracy": 1.0},
    }


def test_it_does_not_count_an_extra_slot_as_a_match():
    extra = '{"intent": "share_screen", "slots": {"name": "Alice"}}'
    assert structured_scores([extra], [REF_C])["json_exact_match"] == 0.0


def test_it_refuses_a_reference_that_is_not_json():
    with pytest.raises(ValueError, match="reference is not a JSON object"):
        structured_scores(["{}"], ["share the screen"])
    with pytest.raises(ValueError, match="as many predictions"):
        structured_scores([], [])
