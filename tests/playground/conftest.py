"""Playground fixtures: a served base and a registered model to pick, logged-in page clients, and a
recording stand-in for the gateway (``fake_gateway``) that answers with canned SSE chunks.

The stand-in replaces vLLM behind ``inference.gateway.proxy`` for the unit tests only; the
end-to-end test (``test_vllm_chat.py``) goes through the real gateway to a real vLLM.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.test import Client

from playground import streaming
from registry.models import BaseModel, RegisteredModel
from tests.helpers import free_port

SERVED_BASE = "tiny-llama"


@pytest.fixture
def served_base(db, settings):
    """A base model registered and configured as served (nothing listens on its port)."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": (f"{SERVED_BASE}:{free_port()}",)}
    return BaseModel.objects.create(name=SERVED_BASE, path="/models/tiny-llama")


@pytest.fixture
def bot(user):
    """Alice's registered model "bot" (a name the model picker offers her)."""
    return RegisteredModel.objects.create(owner=user, name="bot")


@pytest.fixture
def page(user) -> Client:
    """A browser session logged in as alice, with Django's CSRF check on, as in production."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def other_page(other_user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(other_user)
    return client


def csrf_token(client: Client) -> str:
    """The CSRF token of ``client``'s session (set by rendering any page with a form)."""
    client.get("/playground/")
    return client.cookies["csrftoken"].value


def post(client: Client, url: str, data: dict[str, Any] | None = None):
    return client.post(url, data or {}, HTTP_X_CSRFTOKEN=csrf_token(client))


def sse_events(response) -> list[tuple[str, dict[str, Any]]]:
    """Read a streamed response to its end: its ``(event, data)`` pairs."""
    # The test client closes the response at the stream's end, as a WSGI server does.
    raw = b"".join(response.streaming_content).decode()
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def chunk(model: str, *, text: str | None = None, finish: str | None = None, usage=None) -> dict[str, Any]:
    choices = [] if usage else [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]
    data: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": choices}
    if usage:
        data["usage"] = usage
    return data


class _Chunks:
    """The fake's response body: canned SSE bytes. Like the gateway's relay, it releases its
    stream once, at its end or at ``close()``, whichever comes first (``fake.released``)."""

    def __init__(self, fake: FakeGateway, items: list[bytes]) -> None:
        self.fake, self.items = fake, items
        self.done = False

    def __iter__(self):
        try:
            for item in self.items:
                yield item
                time.sleep(self.fake.delay)  # a model generating slowly (browser tests press Stop)
        finally:
            self.close()

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.fake.released += 1


class FakeGateway:
    """Stands in for ``proxy``: records each call, answers ``answers[model]``.

    An answer is a list of text pieces (then a finish chunk, a usage chunk and ``[DONE]``), a
    list with an ``{"error": ...}`` dict where the stream breaks, or an ApiError to raise.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: dict[str, Any] = {}
        self.released = 0
        self.delay = 0.0

    def __call__(self, request: Any, body: dict[str, Any], endpoint: str) -> StreamingHttpResponse:
        self.calls.append(
            {
                "user": request.user,
                "auth": request.auth,
                "headers": dict(request.headers),
                "endpoint": endpoint,
                "body": copy.deepcopy(body),
            }
        )
        model = body["model"]
        answer = self.answers.get(model, ["Hello", ", ", "world."])
        if isinstance(answer, Exception):
            raise answer
        items = [chunk(model, text="")]
        broke = False
        for piece in answer:
            if isinstance(piece, dict):
                items.append(piece)
                broke = True
                break
            items.append(chunk(model, text=piece))
        if not broke:
            completion = len(answer)
            items += [
                chunk(model, finish="stop"),
                chunk(
                    model, usage={"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}
                ),
            ]
        encoded = [f"data: {json.dumps(item)}\n\n".encode() for item in items]
        if not broke:
            encoded.append(b"data: [DONE]\n\n")
        return StreamingHttpResponse(_Chunks(self, encoded), content_type="text/event-stream")

    def messages(self, index: int = -1) -> list[dict[str, str]]:
        return self.calls[index]["body"]["messages"]


@pytest.fixture
def fake_gateway(monkeypatch) -> FakeGateway:
    fake = FakeGateway()
    monkeypatch.setattr(streaming, "proxy", fake)
    return fake
