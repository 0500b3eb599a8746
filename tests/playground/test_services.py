"""Playground services and selectors: sessions, turns, answers and the history each side sends."""

from __future__ import annotations

import pytest

from playground.models import ChatMessage, ChatSession
from playground.selectors import chat_gateway_messages, chat_session_get, chat_session_list
from playground.services import Turn, chat_answer_record, chat_session_create, chat_turn_start
from registry.models import RegisteredModel
from tuninglab.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError

pytestmark = pytest.mark.django_db


def test_it_creates_a_session_with_a_name_the_picker_offers(user, served_base, bot):
    session = chat_session_create(
        owner=user, model=" bot ", compare_model="tiny-llama", system_prompt="Be brief.", temperature=0, max_tokens=32
    )
    stored = ChatSession.objects.get()
    assert stored.id.startswith("chat-") and len(stored.id) == len("chat-") + 24
    assert (stored.owner, stored.model, stored.compare_model) == (user, "bot", "tiny-llama")
    assert (stored.system_prompt, stored.temperature, stored.max_tokens) == ("Be brief.", 0.0, 32)
    assert session.sides == ["a", "b"] and session.model_for("b") == "tiny-llama"


def test_it_refuses_an_unknown_model_with_the_names_to_use_and_writes_nothing(user, served_base, bot):
    with pytest.raises(NotFoundError) as unknown:
        chat_session_create(owner=user, model="no-such-model")
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    assert unknown.value.suggestion == "Use one of: tiny-llama, bot"

    with pytest.raises(NotFoundError) as compare:
        chat_session_create(owner=user, model="bot", compare_model="mallory-bot")
    assert compare.value.code == "model_not_found" and compare.value.param == "compare_model"
    assert ChatSession.objects.count() == 0


def test_it_refuses_another_owners_model_like_a_missing_one(user, other_user, served_base):
    RegisteredModel.objects.create(owner=other_user, name="secret")
    with pytest.raises(NotFoundError) as theirs:
        chat_session_create(owner=user, model="secret")
    assert theirs.value.code == "model_not_found" and "secret" not in theirs.value.suggestion
    assert ChatSession.objects.count() == 0


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"model": ""}, "model"),
        ({"model": "bad name/../x"}, "model"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"system_prompt": "x" * 16_001}, "system_prompt"),
    ],
)
def test_it_refuses_settings_out_of_range(user, served_base, bot, options, param):
    with pytest.raises(InvalidRequestError) as refused:
        chat_session_create(owner=user, **{"model": "bot", **options})
    assert refused.value.param == param
    assert ChatSession.objects.count() == 0


def test_it_stores_one_prompt_per_side_and_numbers_turns(user, served_base, bot):
    session = chat_session_create(owner=user, model="bot", compare_model="tiny-llama")
    first = chat_turn_start(session=session, content="  What is   LoRA?\nExplain. ")
    chat_answer_record(turn=first, side="a", content="A low-rank adapter.", model="bot", finish_reason="stop")
    second = chat_turn_start(session=session, content="Thanks")

    assert (first.number, first.answer_order, second.number, second.answer_order) == (0, 1, 1, 3)
    prompts = ChatMessage.objects.filter(role="user").order_by("order", "side")
    assert [(m.side, m.order, m.content) for m in prompts] == [
        ("a", 0, "  What is   LoRA?\nExplain. "),
        ("b", 0, "  What is   LoRA?\nExplain. "),
        ("a", 2, "Thanks"),
        ("b", 2, "Thanks"),
    ]
    # An untitled session is named after its first prompt, whitespace collapsed.
    assert ChatSession.objects.get().title == "What is LoRA? Explain."


def test_it_refuses_an_empty_or_oversized_prompt(user, served_base, bot):
    session = chat_session_create(owner=user, model="bot")
    for content, code in ((" \n ", "empty_prompt"), ("x" * 32_001, "prompt_too_long")):
        with pytest.raises(InvalidRequestError) as refused:
            chat_turn_start(session=session, content=content)
        assert refused.value.code == code
    assert ChatMessage.objects.count() == 0


def test_the_history_is_the_system_prompt_and_the_earlier_answered_turns_of_that_side(user, served_base, bot):
    session = chat_session_create(owner=user, model="bot", compare_model="tiny-llama", system_prompt="Be brief.")
    t0 = chat_turn_start(session=session, content="one")
    chat_answer_record(turn=t0, side="a", content="A1", finish_reason="stop")
    chat_answer_record(turn=t0, side="b", content="B1", finish_reason="stop")
    t1 = chat_turn_start(session=session, content="two")
    chat_answer_record(turn=t1, side="a", content="", error=ServiceUnavailableError("down", code="x"))
    chat_answer_record(turn=t1, side="b", content="B2 partial", finish_reason="interrupted")
    t2 = chat_turn_start(session=session, content="three")

    assert chat_gateway_messages(session=session, side="a", turn=t2.number) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "A1"},
        # turn 1 failed on side a: left out with its prompt
        {"role": "user", "content": "three"},
    ]
    assert chat_gateway_messages(session=session, side="b", turn=t2.number) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "B1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "B2 partial"},  # interrupted, but the user saw it
        {"role": "user", "content": "three"},
    ]


def test_it_records_usage_and_errors_on_the_answer(user, served_base, bot):
    session = chat_session_create(owner=user, model="bot")
    turn = chat_turn_start(session=session, content="hi")
    assert isinstance(turn, Turn)
    answer = chat_answer_record(
        turn=turn,
        side="a",
        content="",
        error=ServiceUnavailableError("vLLM is starting", code="inference_unavailable", suggestion="Retry in 5 s."),
        usage={"prompt_tokens": 3, "completion_tokens": True},
    )
    answer.refresh_from_db()
    assert (answer.order, answer.role, answer.error_code) == (1, "assistant", "inference_unavailable")
    assert (answer.error_message, answer.error_suggestion) == ("vLLM is starting", "Retry in 5 s.")
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, None)


def test_selectors_see_only_the_owners_sessions(user, other_user, served_base, bot):
    mine = chat_session_create(owner=user, model="bot")
    theirs = chat_session_create(owner=other_user, model="tiny-llama")
    assert list(chat_session_list(owner=user)) == [mine]
    assert chat_session_get(owner=user, session_id=mine.id) == mine
    with pytest.raises(NotFoundError):
        chat_session_get(owner=user, session_id=theirs.id)
