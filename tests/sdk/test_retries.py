"""Retry policy, Retry-After, idempotency keys and error mapping, on a stub transport
(``httpx.MockTransport``): exact control over statuses and headers, no server needed."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx
import pytest
from tuninglab_sdk import (
    APIConnectionError,
    APITimeoutError,
    AsyncTuningLab,
    ConflictError,
    FeatureUnavailableError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TuningLab,
    ValidationError,
)
from tuninglab_sdk._retry import backoff_delay, parse_retry_after, should_retry_response

JOB = {"object": "fine_tuning.job", "id": "ftjob-abc", "status": "queued", "model": "tiny-llama"}


def error(status: int, code: str, message: str = "nope", param: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """A transport that answers from a list, recording each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(script: Script, sleeps: list[float], max_retries: int = 3) -> TuningLab:
    return TuningLab(
        base_url="http://tl.test",
        api_key="tl-test",
        max_retries=max_retries,
        http_client=httpx.Client(transport=httpx.MockTransport(script)),
        sleep=sleeps.append,
    )


def test_it_honours_retry_after_seconds_on_429():
    script = Script(error(429, "rate_limit_exceeded", **{"Retry-After": "7"}), httpx.Response(200, json=JOB))
    sleeps: list[float] = []

    job = client_for(script, sleeps).tunings.get("ftjob-abc")

    assert job.id == "ftjob-abc"
    assert sleeps == [7.0]
    assert len(script.requests) == 2


def test_it_honours_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    script = Script(error(429, "rate_limit_exceeded", **{"Retry-After": when}), httpx.Response(200, json=JOB))
    sleeps: list[float] = []

    client_for(script, sleeps).tunings.get("ftjob-abc")

    assert len(sleeps) == 1 and 28.0 <= sleeps[0] <= 30.0


def test_it_raises_rate_limit_error_when_retry_after_is_too_long_to_sleep_through():
    script = Script(error(429, "rate_limit_exceeded", **{"Retry-After": "3600"}))
    sleeps: list[float] = []

    with pytest.raises(RateLimitError) as caught:
        client_for(script, sleeps).tunings.get("ftjob-abc")

    assert sleeps == [] and caught.value.status == 429 and caught.value.code == "rate_limit_exceeded"


def test_it_backs_off_exponentially_with_jitter_on_5xx_then_gives_up():
    script = Script(*[httpx.Response(502, text="bad gateway") for _ in range(4)])
    sleeps: list[float] = []

    with pytest.raises(InternalServerError) as caught:
        client_for(script, sleeps, max_retries=3).tunings.get("ftjob-abc")

    assert caught.value.status == 502
    assert len(script.requests) == 4
    # 0.5 s, 1 s, 2 s, each scaled by a jitter factor in [0.75, 1.0]
    for delay, base in zip(sleeps, [0.5, 1.0, 2.0], strict=True):
        assert 0.75 * base <= delay <= base
    for i in range(12):
        cap = min(0.5 * 2**i, 8.0)
        assert 0.75 * cap <= backoff_delay(i) <= cap


def test_it_retries_connection_errors_and_then_raises_api_connection_error():
    request = httpx.Request("GET", "http://tl.test/v1/tunings/x")
    script = Script(
        httpx.ConnectError("refused", request=request),
        httpx.RemoteProtocolError("Server disconnected", request=request),
        httpx.Response(200, json=JOB),
    )
    sleeps: list[float] = []
    assert client_for(script, sleeps).tunings.get("x").id == "ftjob-abc"
    assert len(sleeps) == 2

    failing = Script(*[httpx.ConnectError("refused", request=request) for _ in range(3)])
    with pytest.raises(APIConnectionError):
        client_for(failing, [], max_retries=2).tunings.get("x")
    assert len(failing.requests) == 3

    timing_out = Script(httpx.ReadTimeout("slow", request=request))
    with pytest.raises(APITimeoutError):
        client_for(timing_out, [], max_retries=0).tunings.get("x")


def test_it_reuses_one_idempotency_key_across_the_retries_of_a_post():
    script = Script(
        httpx.Response(503, text="busy"),
        error(409, "idempotency_request_in_progress"),
        httpx.Response(201, json=JOB),
    )
    sleeps: list[float] = []

    client_for(script, sleeps).tunings.create(model="tiny-llama", data="file-abc")

    keys = [r.headers["Idempotency-Key"] for r in script.requests]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert json.loads(script.requests[0].content) == {"model": "tiny-llama", "training_file": "file-abc"}

    again = Script(httpx.Response(201, json=JOB))
    client_for(again, []).tunings.create(model="tiny-llama", data="file-abc")
    assert again.requests[0].headers["Idempotency-Key"] not in keys  # a new logical request


def test_it_retries_409_only_for_an_in_flight_idempotent_request():
    state_conflict = Script(error(409, "invalid_state", "Cannot cancel job ftjob-abc: it is succeeded."))
    sleeps: list[float] = []
    with pytest.raises(ConflictError) as caught:
        client_for(state_conflict, sleeps).tunings.cancel("ftjob-abc")
    assert caught.value.code == "invalid_state"
    assert len(state_conflict.requests) == 1 and sleeps == []

    in_flight = Script(error(409, "idempotency_request_in_progress"), httpx.Response(200, json=JOB))
    client_for(in_flight, sleeps).tunings.cancel("ftjob-abc")
    assert len(in_flight.requests) == 2


def test_it_does_not_retry_client_errors():
    for status, cls in [(400, ValidationError), (403, PermissionDeniedError), (404, NotFoundError)]:
        script = Script(error(status, "some_code", param="training_file"))
        with pytest.raises(cls) as caught:
            client_for(script, []).tunings.get("x")
        assert len(script.requests) == 1
        assert caught.value.param == "training_file" and caught.value.code == "some_code"


def test_it_maps_422_to_validation_error_with_param():
    script = Script(error(422, "idempotency_key_reused", param="Idempotency-Key"))
    with pytest.raises(ValidationError) as caught:
        client_for(script, []).tunings.create(model="m", data="file-x", idempotency_key="k")
    assert caught.value.status == 422 and caught.value.param == "Idempotency-Key"


def test_it_parses_retry_after_variants():
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "garbage"}) is None
    assert parse_retry_after({}) is None
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


def test_it_lets_the_server_veto_or_force_a_retry():
    assert should_retry_response(httpx.Response(500, headers={"x-should-retry": "false"})) is False
    assert should_retry_response(httpx.Response(400, headers={"x-should-retry": "true"})) is True
    assert should_retry_response(httpx.Response(501)) is False
    assert should_retry_response(httpx.Response(408)) is True


def test_it_sends_a_per_call_timeout():
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=JOB)

    client = TuningLab(
        base_url="http://tl.test/v1/",
        api_key="k",
        timeout=12.0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    client.tunings.get("a")
    client.tunings.get("a", timeout=3.0)
    assert seen[0]["read"] == 12.0 and seen[1]["read"] == 3.0


def test_it_reads_base_url_and_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNINGLAB_BASE_URL", "http://env.test:9000/v1")
    monkeypatch.setenv("TUNINGLAB_API_KEY", "tl-from-env")
    captured: list[httpx.Request] = []
    client = TuningLab(
        http_client=httpx.Client(
            transport=httpx.MockTransport(lambda r: captured.append(r) or httpx.Response(200, json=JOB))
        )
    )
    client.tunings.get("ftjob-abc")
    assert str(captured[0].url) == "http://env.test:9000/v1/tunings/ftjob-abc"
    assert captured[0].headers["Authorization"] == "Bearer tl-from-env"


CHAT = [{"role": "user", "content": "hi"}]


def gateway_503(retry_after: str = "5") -> httpx.Response:
    """The gateway's answer while vLLM starts (inference.gateway._unavailable)."""
    body = {
        "error": {
            "message": "The inference server for tiny-llama is not available: vLLM is starting.",
            "type": "server_error",
            "param": None,
            "code": "inference_unavailable",
            "suggestion": f"Retry in {retry_after} s. Operators: `manage.py serve_inference` runs and supervises vLLM.",
        }
    }
    return httpx.Response(503, json=body, headers={"Retry-After": retry_after})


def test_it_reports_a_server_without_the_chat_route_as_feature_unavailable():
    html_404 = httpx.Response(404, text="<h1>Not Found</h1>", headers={"content-type": "text/html"})
    with pytest.raises(FeatureUnavailableError) as caught:
        client_for(Script(html_404), []).chat.completions.create(model="support-bot", messages=CHAT)
    assert "not on this server" in str(caught.value) and "pending" not in str(caught.value)
    assert caught.value.status == 404 and caught.value.suggestion


def test_it_raises_the_gateways_own_404_with_its_suggestion():
    answer = error(404, "model_not_found", "The model 'bot' does not exist.", "model")
    answer = httpx.Response(
        404, json={"error": {**answer.json()["error"], "suggestion": "Use one of: tiny-llama, support-bot"}}
    )
    sleeps: list[float] = []
    with pytest.raises(NotFoundError) as caught:
        client_for(Script(answer), sleeps).chat.completions.create(model="bot", messages=CHAT)
    assert not isinstance(caught.value, FeatureUnavailableError)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    assert caught.value.suggestion == "Use one of: tiny-llama, support-bot"
    assert sleeps == []  # a 404 is final


def test_it_waits_out_a_starting_vllm_honouring_retry_after():
    completion = {"id": "chatcmpl-1", "model": "support-bot", "choices": [{"message": {"content": "Hello"}}]}
    script = Script(gateway_503("5"), gateway_503("5"), httpx.Response(200, json=completion))
    sleeps: list[float] = []

    answer = client_for(script, sleeps).chat.completions.create(model="support-bot", messages=CHAT)

    assert answer.content == "Hello" and answer.model == "support-bot"
    assert sleeps == [5.0, 5.0]
    assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 1


def test_it_raises_the_503_with_its_code_suggestion_and_retry_after_once_retries_are_spent():
    script = Script(*[gateway_503("2") for _ in range(3)])
    sleeps: list[float] = []

    with pytest.raises(InternalServerError) as caught:
        client_for(script, sleeps, max_retries=2).chat.completions.create(model="support-bot", messages=CHAT)

    error = caught.value
    assert not isinstance(error, FeatureUnavailableError)
    assert (error.status, error.code, error.type) == (503, "inference_unavailable", "server_error")
    assert error.message.endswith("vLLM is starting.") and error.suggestion.startswith("Retry in 2 s.")
    assert error.retry_after == 2.0
    assert "[503 inference_unavailable]" in str(error) and "Suggestion: Retry in 2 s." in str(error)
    assert sleeps == [2.0, 2.0] and len(script.requests) == 3


def test_it_retries_a_stream_until_its_first_chunk_only():
    sse = 'data: {"id":"c1","choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
    ok = httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
    limited = error(429, "too_many_concurrent_requests", **{"Retry-After": "1"})
    script = Script(gateway_503("3"), limited, ok)
    sleeps: list[float] = []

    stream = client_for(script, sleeps).chat.completions.create(model="support-bot", messages=CHAT, stream=True)

    assert [c["choices"][0]["delta"]["content"] for c in stream] == ["Hi"]
    assert sleeps == [3.0, 1.0]
    assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 1
    assert all(r.headers["Accept"].startswith("text/event-stream,") for r in script.requests)

    broken = Script(httpx.Response(200, stream=BrokenStream(b'data: {"id":"c2"}\n\n')))
    sleeps.clear()
    with pytest.raises(APIConnectionError):
        list(client_for(broken, sleeps).chat.completions.create(model="m", messages=CHAT, stream=True))
    assert len(broken.requests) == 1 and sleeps == []  # tokens went out: never resent


def test_it_retries_a_stream_in_the_async_client_too():
    sse = 'data: {"id":"c1","choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
    script = Script(gateway_503("4"), httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"}))
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> list[dict]:
        async with AsyncTuningLab(
            base_url="http://tl.test",
            api_key="k",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(script)),
            sleep=record,
        ) as client:
            stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
            return [chunk async for chunk in stream]

    assert [c["id"] for c in asyncio.run(run())] == ["c1"]
    assert sleeps == [4.0]


class BrokenStream(httpx.SyncByteStream):
    """A body that sends ``first`` and then loses the connection."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self):
        yield self.first
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_it_reports_registry_errors_as_plain_api_errors():
    # The registry is served: a 404 is an unknown model (or a server too old, said plainly), never "pending".
    html_404 = httpx.Response(404, text="<h1>Not Found</h1>", headers={"content-type": "text/html"})
    for answer in (html_404, error(404, "model_not_found")):
        with pytest.raises(NotFoundError) as caught:
            client_for(Script(answer), []).models.versions("nope")
        assert not isinstance(caught.value, FeatureUnavailableError)
    with pytest.raises(ConflictError) as refused:
        client_for(Script(error(409, "nothing_to_roll_back")), []).models.rollback("support-bot")
    assert refused.value.code == "nothing_to_roll_back"


def test_it_builds_registry_requests_with_their_bodies_and_keys():
    move = {"object": "model.alias_move", "model": "support-bot", "alias": "production", "version": 2,
            "previous_version": 1, "event": {"id": "7", "kind": "promote", "from_version": 1, "to_version": 2,
                                             "actor": "alice", "reason": "better", "created_at": 1}}  # fmt: skip
    page = {"object": "list", "data": [{"id": "mv-2", "version": 2}], "has_more": False, "last_id": "mv-2"}
    script = Script(
        httpx.Response(200, json=move),
        httpx.Response(200, json=move),
        httpx.Response(200, json=page),
        httpx.Response(200, json={"id": "cmp-1", "status": "queued", "version_a": "base", "version_b": 2}),
        httpx.Response(200, text="## A/B comparison", headers={"content-type": "text/markdown"}),
    )
    client = client_for(script, [])

    moved = client.models.promote("support-bot", version=2, reason="better", idempotency_key="k-1")
    client.models.rollback("support-bot", to_version=1, alias="staging")
    versions = client.models.versions("support-bot")
    comparison = client.models.compare("support-bot", "base", 2, file="file-abc", max_examples=5)
    report = client.models.comparison_report("cmp-1")

    sent = [(r.method, r.url.path, json.loads(r.content) if r.content else None) for r in script.requests]
    assert sent == [
        ("POST", "/v1/models/support-bot/promote", {"alias": "production", "version": 2, "reason": "better"}),
        ("POST", "/v1/models/support-bot/rollback", {"alias": "staging", "version": 1}),
        ("GET", "/v1/models/support-bot/versions", None),
        ("POST", "/v1/models/support-bot/comparisons",
         {"version_a": "base", "version_b": 2, "file": "file-abc", "max_examples": 5}),
        ("GET", "/v1/comparisons/cmp-1/report", None),
    ]  # fmt: skip
    assert script.requests[0].headers["Idempotency-Key"] == "k-1"
    assert script.requests[1].headers["Idempotency-Key"]  # every POST carries one
    assert script.requests[2].url.params["limit"] == "100"
    assert (moved.version, moved.previous_version, moved.event.actor, moved.event.kind) == (2, 1, "alice", "promote")
    assert [v.version for v in versions] == [2]
    assert (comparison.version_a, comparison.version_b) == ("base", 2)
    assert report == "## A/B comparison"
    assert "text/markdown" in script.requests[4].headers["Accept"]


def test_it_builds_route_requests_from_mappings_or_typed_parts():
    route = {"object": "model.route", "model": "support-bot", "sticky": "header",
             "splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],
             "shadow": {"version": 3, "percent": 5}, "updated_at": 1}  # fmt: skip
    script = Script(
        httpx.Response(200, json=route),
        httpx.Response(200, json=route),
        httpx.Response(204),
        httpx.Response(200, json={"object": "list", "data": []}),
    )
    client = client_for(script, [])

    first = client.models.set_route(
        "support-bot",
        splits=[{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],
        sticky="header",
        shadow={"version": 3, "percent": 5},
    )
    client.models.set_route("support-bot", splits=first.splits)  # typed parts back; sticky/shadow reset
    assert client.models.delete_route("support-bot") is None
    assert client.models.shadow_records("support-bot", limit=5) == []

    sent = [(r.method, r.url.path, json.loads(r.content) if r.content else None) for r in script.requests]
    assert sent == [
        ("PUT", "/v1/models/support-bot/route", {"splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],
                                                 "sticky": "header", "shadow": {"version": 3, "percent": 5}}),
        ("PUT", "/v1/models/support-bot/route", {"splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],
                                                 "sticky": "user", "shadow": None}),
        ("DELETE", "/v1/models/support-bot/route", None),
        ("GET", "/v1/models/support-bot/shadow_records", None),
    ]  # fmt: skip
    assert "Idempotency-Key" not in script.requests[0].headers  # a PUT replaces: resending it is safe
    assert script.requests[3].url.params["limit"] == "5"
    assert (first.sticky, first.shadow.version, first.shadow.percent) == ("header", 3, 5)
    assert [(s.version, s.weight) for s in first.splits] == [(1, 90), (2, 10)]


def test_it_streams_chat_completion_chunks():
    sse = (
        'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"delta":{"content":"Hel"}}]}\n\n'
        'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"delta":{"content":"lo"}}]}\n\n'
        "data: [DONE]\n\n"
    )
    script = Script(httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"}))
    stream = client_for(script, []).chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in stream)
    assert text == "Hello"
    assert json.loads(script.requests[0].content)["stream"] is True


def test_it_retries_in_the_async_client_with_the_same_key_and_retry_after():
    script = Script(
        error(429, "rate_limit_exceeded", **{"Retry-After": "4"}),
        httpx.Response(502),
        httpx.Response(201, json=JOB),
    )
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> str:
        async with AsyncTuningLab(
            base_url="http://tl.test",
            api_key="k",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(script)),
            sleep=record,
        ) as client:
            job = await client.tunings.create(model="tiny-llama", data="file-abc")
            return job.id

    assert asyncio.run(run()) == "ftjob-abc"
    assert sleeps[0] == 4.0 and 0.75 <= sleeps[1] <= 1.0
    assert len({r.headers["Idempotency-Key"] for r in script.requests}) == 1


def test_it_keeps_waiting_through_a_server_restart():
    request = httpx.Request("GET", "http://tl.test/v1/tunings/ftjob-abc")
    running = {**JOB, "status": "running", "progress": 50.0}
    done = {**JOB, "status": "succeeded", "progress": 100.0, "fine_tuned_model": "ft:tiny-llama:alice::ftjob-abc"}
    script = Script(
        httpx.Response(200, json=running),
        httpx.ConnectError("refused", request=request),  # the server restarts...
        httpx.Response(503, text="starting"),
        httpx.Response(200, json=done),
    )
    client = client_for(script, [], max_retries=0)
    polls: list[float] = []
    client._poll_sleep = polls.append

    job = client.tunings.wait_for_completion("ftjob-abc", poll_interval=1.5, progress=False)

    assert job.status == "succeeded" and job.fine_tuned_model.endswith("ftjob-abc")
    assert polls == [1.5, 1.5, 1.5]

    down = Script(*[httpx.ConnectError("refused", request=request) for _ in range(10)])
    client = client_for(down, [], max_retries=0)
    client._poll_sleep = lambda s: None
    with pytest.raises(APIConnectionError):
        client.tunings.wait_for_completion("ftjob-abc", progress=False)
    assert len(down.requests) == 10
