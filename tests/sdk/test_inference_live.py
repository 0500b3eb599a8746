"""The SDK against the live server's inference gateway, with no vLLM: chat (whole and streamed)
through a stand-in for vLLM's chat route, a route's split and shadow, live traffic and shadow
records; the gateway's 404 with its suggestion; its 503 ``inference_unavailable`` waited out
for ``Retry-After`` while vLLM starts, and raised with its code once the retries are spent."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tuninglab_sdk import (
    AsyncTuningLab,
    ChatCompletion,
    InternalServerError,
    NotFoundError,
    Route,
    RouteShadow,
    RouteSplit,
    ShadowRecord,
    TuningLab,
    VersionTraffic,
)

from inference.adapters import adapter_name
from inference.models import ServingProcess
from inference.vllm_http import close_clients
from tests.helpers import free_port

# The registry suite's version fixtures (the F811 noqas below: pytest injects them by name).
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "Who are you?"}]
RETRY_AFTER_S = 1  # the gateway's Retry-After here: short, so the tests wait it out for real


class FakeVllmChat:
    """vLLM's ``POST /v1/chat/completions`` in a thread: answers "Hello from <model>" (the name
    the gateway sent, so a test sees which version a request went to), whole or as SSE with a
    usage chunk, like vLLM when asked for ``stream_options.include_usage``. Records each body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                fake.bodies.append(body)
                content_type, payload = fake.answer(body)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def answer(body: dict[str, Any]) -> tuple[str, bytes]:
        model = body["model"]
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            completion = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Hello from {model}"}}],
                "usage": usage,
            }
            return "application/json", json.dumps(completion).encode()
        chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "model": model}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": {"content": "Hello "}}]},
            {**chunk, "choices": [{"index": 0, "delta": {"content": f"from {model}"}}]},
            {**chunk, "choices": [], "usage": usage},
        ]
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return "text/event-stream", text.encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_on(settings, port: int) -> None:
    settings.TUNINGLAB = {
        **settings.TUNINGLAB,
        "INFERENCE_BASE_MODELS": (f"tiny-llama:{port}",),
        "INFERENCE_RETRY_AFTER_SECONDS": RETRY_AFTER_S,
    }


@pytest.fixture
def vllm(settings) -> Iterator[FakeVllmChat]:
    """tiny-llama served by the stand-in."""
    fake = FakeVllmChat()
    serve_on(settings, fake.port)
    yield fake
    close_clients()
    fake.close()


@pytest.fixture
def nobody_listens(settings) -> Iterator[None]:
    """tiny-llama served on a port nothing listens on: the gateway answers 503 at once."""
    serve_on(settings, free_port())
    yield
    close_clients()


@pytest.fixture
def connect(live_server, raw_key) -> Iterator[Callable[..., TuningLab]]:
    """``connect(**options)``: a client of the live server, closed after the test."""
    clients: list[TuningLab] = []

    def make(**options: Any) -> TuningLab:
        clients.append(TuningLab(base_url=live_server.url, api_key=raw_key, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def sleeping(sleeps: list[float], then: Callable[[], None] = lambda: None) -> Callable[[float], None]:
    """A retry sleep that records its seconds, runs ``then`` and really sleeps."""

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        then()
        time.sleep(seconds)

    return sleep


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def starting(base_name: str = "tiny-llama") -> None:
    ServingProcess.objects.create(base_name=base_name, status=ServingProcess.Status.STARTING)


def becomes_ready() -> None:
    ServingProcess.objects.update(status=ServingProcess.Status.READY)


def test_it_chats_through_a_route_and_reads_its_traffic_and_shadow_records(
    connect,
    vllm,
    tiny_adapter_version,  # noqa: F811
):
    _, v2, v3 = (tiny_adapter_version() for _ in range(3))
    client = connect(max_retries=0)

    route = client.models.set_route(
        "bot",
        splits=[{"version": 1, "weight": 0}, RouteSplit(version=2, weight=100)],
        sticky="none",
        shadow={"version": 3, "percent": 100},
    )
    answer = client.chat.completions.create(model="bot", messages=MESSAGES, max_tokens=8)
    stream = client.chat.completions.create(model="bot", messages=MESSAGES, stream=True)
    chunks = list(stream)
    # Both answers and both shadow copies are counted once each response has been closed.
    wait_until(
        lambda: [(t.requests, t.shadow_requests) for t in client.models.traffic("bot")] == [(0, 0), (2, 0), (0, 2)]
    )
    traffic = client.models.traffic("bot")
    records = client.models.shadow_records("bot")

    assert isinstance(route, Route) and route == client.models.route("bot")
    assert (route.model, route.sticky) == ("bot", "none")
    assert route.splits == [RouteSplit(1, 0), RouteSplit(2, 100)] and route.shadow == RouteShadow(3, 100)
    assert isinstance(answer, ChatCompletion)
    assert (answer.model, answer.content) == ("bot", f"Hello from {adapter_name(v2)}")
    assert answer.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == f"Hello from {adapter_name(v2)}"
    assert {c["model"] for c in chunks} == {"bot"}
    assert all(c["choices"] for c in chunks)  # the usage chunk the gateway asked vLLM for is not passed on
    assert all(isinstance(t, VersionTraffic) for t in traffic)
    assert [(t.version, t.errors, t.prompt_tokens, t.completion_tokens) for t in traffic] == [
        (1, 0, 0, 0),
        (2, 0, 10, 6),
        (3, 0, 0, 0),
    ]
    assert traffic[1].error_rate == 0.0 and traffic[1].mean_latency_ms > 0 and traffic[1].last_request_at
    assert traffic[0].error_rate is None and traffic[0].last_request_at is None
    assert len(records) == 2 and all(isinstance(r, ShadowRecord) for r in records)
    assert {(r.endpoint, r.primary_version, r.shadow_version, r.error) for r in records} == {("chat", 2, 3, None)}
    assert {r.shadow_output for r in records} == {f"Hello from {adapter_name(v3)}"}
    assert {r.primary_output for r in records} == {f"Hello from {adapter_name(v2)}"}
    assert records[0].request["messages"] == MESSAGES and records[0].created_at
    assert [r.id for r in client.models.shadow_records("bot", limit=1)] == [records[0].id]
    # vLLM saw the internal adapter names: two primaries on v2, their two shadow copies on v3.
    assert sorted(b["model"] for b in vllm.bodies) == sorted([adapter_name(v2)] * 2 + [adapter_name(v3)] * 2)

    client.models.delete_route("bot")
    with pytest.raises(NotFoundError) as gone:
        client.models.route("bot")
    assert gone.value.code == "route_not_found"


def test_it_waits_out_a_starting_vllm_for_retry_after_then_answers(connect, registered_model, vllm):
    starting()
    sleeps: list[float] = []
    client = connect(max_retries=2, sleep=sleeping(sleeps, becomes_ready))

    started = time.monotonic()
    answer = client.chat.completions.create(model="tiny-llama", messages=MESSAGES)

    assert time.monotonic() - started >= RETRY_AFTER_S
    assert sleeps == [RETRY_AFTER_S]
    assert (answer.model, answer.content) == ("tiny-llama", "Hello from tiny-llama")


@pytest.mark.parametrize("stream", [False, True])
def test_it_raises_inference_unavailable_with_its_suggestion_once_retries_are_spent(
    connect, registered_model, nobody_listens, stream
):
    sleeps: list[float] = []
    client = connect(max_retries=1, sleep=sleeping(sleeps))

    started = time.monotonic()
    with pytest.raises(InternalServerError) as caught:
        answer = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, stream=stream)
        if stream:
            list(answer)  # a stream sends its request when iterated

    assert time.monotonic() - started >= RETRY_AFTER_S  # it waited the gateway's Retry-After once
    assert sleeps == [RETRY_AFTER_S]
    error = caught.value
    assert (error.status, error.code, error.type) == (503, "inference_unavailable", "server_error")
    assert error.message == "The inference server for tiny-llama is not available: vLLM is not running."
    assert error.suggestion.startswith(f"Retry in {RETRY_AFTER_S} s.")
    assert error.retry_after == RETRY_AFTER_S


def test_it_raises_model_not_found_at_once_with_the_names_to_use(connect, registered_model, vllm):
    sleeps: list[float] = []
    client = connect(sleep=sleeping(sleeps))

    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create(model="support-bot", messages=MESSAGES)

    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    assert caught.value.suggestion == "Use one of: tiny-llama"
    assert sleeps == [] and vllm.bodies == []


def test_it_routes_chats_and_waits_out_a_starting_vllm_asynchronously(
    live_server,
    raw_key,
    connect,
    vllm,
    tiny_adapter_version,  # noqa: F811
):
    tiny_adapter_version()
    v2 = tiny_adapter_version()
    starting()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.to_thread(becomes_ready)
        await asyncio.sleep(seconds)

    async def run() -> tuple:
        async with AsyncTuningLab(base_url=live_server.url, api_key=raw_key, max_retries=2, sleep=sleep) as client:
            route = await client.models.set_route("bot", splits=[{"version": 2, "weight": 1}], sticky="user")
            fetched = await client.models.route("bot")
            answer = await client.chat.completions.create(model="bot", messages=MESSAGES, user="u-1")
            stream = await client.chat.completions.create(model="bot", messages=MESSAGES, stream=True)
            text = "".join([c["choices"][0]["delta"]["content"] async for c in stream])
            await client.models.delete_route("bot")
            gone = None
            try:
                await client.models.route("bot")
            except NotFoundError as exc:
                gone = exc.code
            return route, fetched, answer, text, gone

    route, fetched, answer, text, gone = asyncio.run(run())
    sync = connect(max_retries=0)
    wait_until(lambda: sync.models.traffic("bot")[1].requests == 2)
    traffic = sync.models.traffic("bot")

    assert route == fetched and (route.sticky, route.splits, route.shadow) == ("user", [RouteSplit(2, 1)], None)
    assert sleeps == [RETRY_AFTER_S]  # the first chat met the starting vLLM once
    assert answer.content == text == f"Hello from {adapter_name(v2)}"
    assert gone == "route_not_found"
    assert [(t.version, t.requests) for t in traffic] == [(1, 0), (2, 2)]
