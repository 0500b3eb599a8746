"""The gateway's latency histograms: one observation per answered version request, and the time
to the first token of a stream, labelled by owner, model and version (``inference.gateway``)."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import REGISTRY

from inference import limits
from inference.config import ServedBase
from inference.gateway import _Relay
from inference.resolve import Target
from registry.models import ModelVersion, RegisteredModel

SSE = (
    b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
    b'data: {"choices": [{"delta": {"content": " there"}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)
LABELS = {"owner": "alice", "model": "bot", "version": "1"}


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0


@pytest.mark.django_db
def test_a_streamed_answer_observes_its_first_token_once_and_its_total_once(user, fake_base_model):
    registered = RegisteredModel.objects.create(owner=user, name="bot")
    version = ModelVersion.objects.create(
        registered_model=registered, owner=user, version=1, base_model=fake_base_model, adapter_path="v1"
    )
    target = Target(requested="bot", base=ServedBase(name="tiny-llama", port=1, host="127.0.0.1"), version=version)
    request = SimpleNamespace(user=user)
    before_total = count("tuninglab_gateway_request_seconds", **LABELS, stream="true")
    before_first = count("tuninglab_gateway_first_token_seconds", **LABELS)

    limits.acquire(user.pk)
    relay = _Relay(
        request, httpx.Response(200, content=SSE), target, {}, "/v1/chat/completions", 0.0, wants_usage=False
    )
    assert b'"Hi"' in b"".join(relay)

    assert count("tuninglab_gateway_request_seconds", **LABELS, stream="true") == before_total + 1
    # The role-only chunk carries no text: the first token is "Hi", observed once, not per chunk.
    assert count("tuninglab_gateway_first_token_seconds", **LABELS) == before_first + 1
    assert version.traffic.requests == 1 and version.traffic.completion_tokens == 2
