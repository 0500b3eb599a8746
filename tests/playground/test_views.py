"""Playground pages with Django's test client: login, owner scoping, CSRF, the streamed answers
and what is stored of them. ``fake_gateway`` stands in for vLLM behind the gateway (conftest)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from inference import limits
from playground.models import ChatMessage, ChatSession
from playground.services import chat_answer_record, chat_session_create, chat_turn_start
from playground.streaming import ChatStream, GatewayCaller
from tests.playground.conftest import post, sse_events
from tuninglab.errors import NotFoundError

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(user, served_base, bot) -> ChatSession:
    return chat_session_create(owner=user, model="bot", system_prompt="Be brief.", temperature=0.2, max_tokens=40)


@pytest.fixture
def pair(user, served_base, bot) -> ChatSession:
    return chat_session_create(owner=user, model="bot", compare_model="tiny-llama")


def send_url(session: ChatSession) -> str:
    return reverse("playground:send", kwargs={"session_id": session.id})


def test_it_serves_the_urls_under_their_names():
    assert reverse("playground:index") == "/playground/"
    assert reverse("playground:create") == "/playground/sessions"
    assert reverse("playground:session", kwargs={"session_id": "chat-1"}) == "/playground/sessions/chat-1/"
    assert reverse("playground:send", kwargs={"session_id": "chat-1"}) == "/playground/sessions/chat-1/messages"
    assert reverse("playground:delete", kwargs={"session_id": "chat-1"}) == "/playground/sessions/chat-1/delete"


def test_every_page_needs_a_login(session, fake_gateway):
    anonymous = Client()
    urls = {
        "get": ["/playground/", reverse("playground:session", kwargs={"session_id": session.id})],
        "post": ["/playground/sessions", send_url(session), f"/playground/sessions/{session.id}/delete"],
    }
    for method, paths in urls.items():
        for path in paths:
            response = getattr(anonymous, method)(path, {"content": "hi", "model": "bot"})
            assert response.status_code == 302, path
            assert response["Location"].startswith("/accounts/login/?next=/playground/"), path
    assert ChatSession.objects.count() == 1 and ChatMessage.objects.count() == 0
    assert fake_gateway.calls == []


def test_the_index_lists_the_users_sessions_newest_first_and_offers_their_models(page, user, other_user, session):
    newer = chat_session_create(owner=user, model="tiny-llama", title="Newer one")
    chat_session_create(owner=other_user, model="tiny-llama", title="Mallory's chat")
    html = page.get("/playground/").content.decode()
    assert html.index("Newer one") < html.index(reverse("playground:session", kwargs={"session_id": session.id}))
    assert newer.id in html and session.id in html
    assert "Mallory" not in html
    assert '<option value="tiny-llama">' in html and '<option value="bot">' in html


def test_creating_a_session_redirects_to_it(page, user, served_base, bot):
    response = post(
        page,
        "/playground/sessions",
        {"model": "bot", "compare_model": "tiny-llama", "system_prompt": "", "temperature": "0.3", "max_tokens": "64"},
    )
    session = ChatSession.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/playground/sessions/{session.id}/"
    assert (session.owner, session.model, session.compare_model, session.temperature, session.max_tokens) == (
        user,
        "bot",
        "tiny-llama",
        0.3,
        64,
    )


def test_creating_a_session_with_an_unknown_model_shows_the_error_and_writes_nothing(page, served_base, bot):
    response = post(page, "/playground/sessions", {"model": "nope", "temperature": "0.7", "max_tokens": "64"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "The model &#x27;nope&#x27; does not exist or you do not have access to it." in html
    assert "Use one of: tiny-llama, bot" in html
    assert ChatSession.objects.count() == 0

    out_of_range = post(page, "/playground/sessions", {"model": "bot", "temperature": "9", "max_tokens": "64"})
    assert out_of_range.status_code == 400 and ChatSession.objects.count() == 0


def test_writes_need_the_csrf_token(page, session, fake_gateway):
    assert (
        page.post("/playground/sessions", {"model": "bot", "temperature": "0.7", "max_tokens": "8"}).status_code == 403
    )
    assert page.post(send_url(session), {"content": "hi"}).status_code == 403
    assert page.post(f"/playground/sessions/{session.id}/delete").status_code == 403
    assert ChatSession.objects.count() == 1 and ChatMessage.objects.count() == 0
    assert fake_gateway.calls == []


def test_another_users_session_is_a_404_everywhere(other_page, session, fake_gateway):
    assert other_page.get(reverse("playground:session", kwargs={"session_id": session.id})).status_code == 404
    assert post(other_page, send_url(session), {"content": "hi"}).status_code == 404
    assert post(other_page, f"/playground/sessions/{session.id}/delete").status_code == 404
    assert ChatSession.objects.filter(pk=session.id).exists() and ChatMessage.objects.count() == 0
    assert fake_gateway.calls == []


def test_only_post_writes(page, session):
    assert page.get(send_url(session)).status_code == 405
    assert page.get(f"/playground/sessions/{session.id}/delete").status_code == 405
    assert page.get("/playground/sessions").status_code == 405


def test_sending_streams_the_answer_and_stores_it(page, user, session, fake_gateway):
    response = post(page, send_url(session), {"content": "What is LoRA?"})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = sse_events(response)

    assert events[0] == ("turn", {"turn": 0, "title": "What is LoRA?", "sides": [{"side": "a", "model": "bot"}]})
    assert [data["text"] for name, data in events if name == "token"] == ["Hello", ", ", "world."]
    answer = ChatMessage.objects.get(role="assistant")
    assert events[-2:] == [
        (
            "done",
            {
                "side": "a",
                "message_id": answer.pk,
                "model": "bot",
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            },
        ),
        ("end", {}),
    ]
    assert (answer.content, answer.model, answer.finish_reason, answer.order) == ("Hello, world.", "bot", "stop", 1)
    assert (answer.prompt_tokens, answer.completion_tokens, answer.error_code) == (7, 3, "")

    call = fake_gateway.calls[0]
    assert call["user"] == user and call["auth"] is None and call["endpoint"] == "chat"
    assert call["headers"] == {"X-Route-Key": session.id}  # a split model keeps one version per session
    assert call["body"] == {
        "model": "bot",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is LoRA?"}],
        "temperature": 0.2,
        "max_tokens": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert fake_gateway.released == 1  # the gateway's stream was released


def test_the_next_turn_sends_the_whole_history_of_the_session(page, session, fake_gateway):
    fake_gateway.answers["bot"] = ["First answer."]
    sse_events(post(page, send_url(session), {"content": "one"}))
    fake_gateway.answers["bot"] = ["Second answer."]
    sse_events(post(page, send_url(session), {"content": "two"}))

    assert fake_gateway.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "two"},
    ]
    # Reopening the session shows every earlier message, in order.
    html = page.get(reverse("playground:session", kwargs={"session_id": session.id})).content.decode()
    positions = [html.index(text) for text in ("one", "First answer.", "two", "Second answer.")]
    assert positions == sorted(positions)


def test_side_by_side_stores_one_answer_per_side_from_its_own_history(page, pair, fake_gateway):
    fake_gateway.answers = {"bot": ["Tessera", " here."], "tiny-llama": ["Once upon"]}
    events = sse_events(post(page, send_url(pair), {"content": "Who are you?"}))
    fake_gateway.answers = {"bot": ["Still Tessera."], "tiny-llama": ["a time."]}
    sse_events(post(page, send_url(pair), {"content": "Sure?"}))

    tokens = [(data["side"], data["text"]) for name, data in events if name == "token"]
    # Read in turns, one event of each stream: the sides interleave.
    assert tokens == [("a", "Tessera"), ("b", "Once upon"), ("a", " here.")]
    # b's stream is shorter: it ends (and is stored) first.
    assert [(name, data["side"]) for name, data in events if name in ("done", "error")] == [
        ("done", "b"),
        ("done", "a"),
    ]
    answers = ChatMessage.objects.filter(role="assistant").order_by("order", "side")
    assert [(m.side, m.order, m.model, m.content) for m in answers] == [
        ("a", 1, "bot", "Tessera here."),
        ("b", 1, "tiny-llama", "Once upon"),
        ("a", 3, "bot", "Still Tessera."),
        ("b", 3, "tiny-llama", "a time."),
    ]
    second_turn = {call["body"]["model"]: call["body"]["messages"] for call in fake_gateway.calls[2:]}
    assert second_turn == {
        "bot": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "Tessera here."},
            {"role": "user", "content": "Sure?"},
        ],
        "tiny-llama": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "Once upon"},
            {"role": "user", "content": "Sure?"},
        ],
    }
    html = page.get(reverse("playground:session", kwargs={"session_id": pair.id})).content.decode()
    assert html.count('class="pg-column"') == 2 and "A · bot" in html and "B · tiny-llama" in html


def test_a_gateway_error_is_stored_on_the_answer_and_sent_as_an_error_event(page, pair, fake_gateway):
    fake_gateway.answers["tiny-llama"] = NotFoundError(
        "The model 'tiny-llama' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
        suggestion="Use one of: bot",
    )
    events = sse_events(post(page, send_url(pair), {"content": "hi"}))

    failed = ChatMessage.objects.get(role="assistant", side="b")
    assert (
        "error",
        {
            "side": "b",
            "message_id": failed.pk,
            "code": "model_not_found",
            "message": "The model 'tiny-llama' does not exist or you do not have access to it.",
            "suggestion": "Use one of: bot",
        },
    ) in events
    assert (failed.content, failed.error_code, failed.error_suggestion) == ("", "model_not_found", "Use one of: bot")
    # The other side answered as usual.
    assert ChatMessage.objects.get(role="assistant", side="a").content == "Hello, world."
    html = page.get(reverse("playground:session", kwargs={"session_id": pair.id})).content.decode()
    assert "<code>model_not_found</code>" in html and "Use one of: bot" in html


def test_an_error_in_the_middle_of_a_stream_keeps_the_text_and_the_error(page, session, fake_gateway):
    broken = {"error": {"message": "vLLM stream broke: reset", "type": "server_error", "code": "upstream_error"}}
    fake_gateway.answers["bot"] = ["Half an ", broken]
    events = sse_events(post(page, send_url(session), {"content": "hi"}))

    answer = ChatMessage.objects.get(role="assistant")
    assert (answer.content, answer.error_code, answer.error_message) == (
        "Half an ",
        "upstream_error",
        "vLLM stream broke: reset",
    )
    assert [name for name, _ in events] == ["turn", "token", "error", "end"]
    assert fake_gateway.released == 1


def test_the_real_gateway_refusing_is_an_error_event_too(page, session):
    """No stand-in: the real ``proxy`` finds nothing listening on the served base's port."""
    base = chat_session_create(owner=session.owner, model="tiny-llama")
    events = sse_events(post(page, send_url(base), {"content": "hi"}))

    error = next(data for name, data in events if name == "error")
    assert error["code"] == "inference_unavailable" and "Retry in" in error["suggestion"]
    assert ChatMessage.objects.get(role="assistant").error_code == "inference_unavailable"
    assert limits.in_flight(session.owner.pk) == 0


def test_an_empty_prompt_is_refused_before_anything_is_stored(page, session, fake_gateway):
    response = post(page, send_url(session), {"content": "   "})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_prompt"
    assert ChatMessage.objects.count() == 0 and fake_gateway.calls == []


# Transactional: closing the gateway's response sends ``request_finished``, which closes the
# connection (as at the end of any request); inside a test's transaction that would end the test.
@pytest.mark.django_db(transaction=True)
def test_a_browser_that_leaves_mid_stream_leaves_an_interrupted_answer(user, pair, fake_gateway):
    fake_gateway.answers = {"bot": ["one", " two", " three"], "tiny-llama": ["uno", " dos"]}
    stream = ChatStream(
        caller=GatewayCaller(user=user, headers={}), turn=chat_turn_start(session=pair, content="count")
    )
    events = iter(stream)
    seen = [next(events) for _ in range(3)]  # turn, a: "one", b: "uno"
    assert b'"text": "uno"' in seen[-1]
    stream.close()  # what Django does when the client went away
    events.close()

    answers = {m.side: m for m in ChatMessage.objects.filter(role="assistant")}
    assert (answers["a"].content, answers["a"].finish_reason) == ("one", "interrupted")
    assert (answers["b"].content, answers["b"].finish_reason) == ("uno", "interrupted")
    assert fake_gateway.released == 2


def test_a_stream_closed_before_it_started_still_answers_every_prompt(user, pair, fake_gateway):
    stream = ChatStream(caller=GatewayCaller(user=user), turn=chat_turn_start(session=pair, content="hi"))
    stream.close()

    answers = ChatMessage.objects.filter(role="assistant").order_by("side")
    assert [(m.side, m.content, m.finish_reason) for m in answers] == [
        ("a", "", "interrupted"),
        ("b", "", "interrupted"),
    ]
    assert fake_gateway.calls == []  # nothing was sent to the gateway


def test_user_and_model_text_is_escaped(page, user, served_base, bot, fake_gateway):
    evil = '<script>alert("x")</script>'
    session = chat_session_create(owner=user, model="bot", system_prompt="<b>sys</b>")
    fake_gateway.answers["bot"] = ["<img src=x onerror=alert(1)>"]
    sse_events(post(page, send_url(session), {"content": evil}))
    chat_answer_record(turn=chat_turn_start(session=session, content="again"), side="a", content="ok")

    html = page.get(reverse("playground:session", kwargs={"session_id": session.id})).content.decode()
    assert evil not in html and "<img src=x" not in html and "<b>sys</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    index = page.get("/playground/").content.decode()
    assert evil not in index and "&lt;script&gt;" in index  # the title came from the prompt


def test_deleting_a_session_removes_it_and_its_messages(page, session, fake_gateway):
    sse_events(post(page, send_url(session), {"content": "hi"}))
    response = post(page, f"/playground/sessions/{session.id}/delete")
    assert response.status_code == 302 and response["Location"] == "/playground/"
    assert ChatSession.objects.count() == 0 and ChatMessage.objects.count() == 0


def test_the_admin_shows_sessions_with_their_messages(admin_client, page, session, fake_gateway):
    sse_events(post(page, send_url(session), {"content": "hi"}))
    answer = ChatMessage.objects.get(role="assistant")
    for url in (
        reverse("admin:playground_chatsession_changelist"),
        reverse("admin:playground_chatsession_change", args=[session.id]),
        reverse("admin:playground_chatmessage_changelist"),
        reverse("admin:playground_chatmessage_change", args=[answer.pk]),
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    # The session's page lists its messages inline.
    assert "Hello, world." in admin_client.get(reverse("admin:playground_chatsession_change", args=[session.id])).text


def test_an_unexpected_gateway_failure_is_stored_without_its_details(page, pair, fake_gateway):
    fake_gateway.answers["bot"] = RuntimeError("connection to db-7.internal refused")
    events = sse_events(post(page, send_url(pair), {"content": "hi"}))

    error = next(data for name, data in events if name == "error")
    assert (error["side"], error["code"]) == ("a", "internal_error")
    assert (
        "db-7" not in error["message"]
        and "db-7" not in ChatMessage.objects.get(side="a", role="assistant").error_message
    )
    assert ChatMessage.objects.get(side="b", role="assistant").content == "Hello, world."
