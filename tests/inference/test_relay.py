"""The SSE relay releases the upstream response and the owner's slot exactly once, even when
Django closes the response before the first event was read (the client went away)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx

from inference import limits
from inference.config import ServedBase
from inference.gateway import _Relay
from inference.resolve import Target

SSE = (
    b'data: {"model": "tiny-llama", "choices": [{"delta": {"content": "Hi"}}]}\n\n'
    b'data: {"model": "tiny-llama", "choices": [], "usage": {"completion_tokens": 1}}\n\n'
    b"data: [DONE]\n\n"
)


def _relay(owner_id: int, *, wants_usage: bool = False) -> tuple[_Relay, httpx.Response]:
    response = httpx.Response(200, content=SSE)
    target = Target(requested="tiny-llama", base=ServedBase(name="tiny-llama", port=1, host="127.0.0.1"))
    request = SimpleNamespace(user=SimpleNamespace(pk=owner_id))
    limits.acquire(owner_id)
    return _Relay(request, response, target, {}, "/v1/chat/completions", 0.0, wants_usage=wants_usage), response


def test_closing_before_iteration_releases_the_slot_once():
    relay, response = _relay(4242)
    assert limits.in_flight(4242) == 1
    relay.close()
    relay.close()
    assert limits.in_flight(4242) == 0 and response.is_closed


def test_a_full_stream_relays_events_drops_the_usage_chunk_nobody_asked_for_and_releases():
    relay, _ = _relay(4243)
    events = b"".join(relay).split(b"\n\n")
    assert events[0].startswith(b"data: ") and b'"Hi"' in events[0]
    assert b"usage" not in b"".join(events) and events[1] == b"data: [DONE]"
    assert relay.usage == {"completion_tokens": 1} and limits.in_flight(4243) == 0


def test_a_caller_who_asked_for_usage_gets_the_usage_chunk():
    relay, _ = _relay(4244, wants_usage=True)
    assert b'"usage": {"completion_tokens": 1}' in b"".join(relay)
