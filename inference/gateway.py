"""The OpenAI-compatible gateway: resolve ``model`` for the caller, forward to vLLM, relay back.

A synchronous streaming proxy over one pooled ``httpx.Client`` per vLLM server
(``inference.vllm_http``): each request holds its own server thread (gunicorn ``--threads``
/ ``runserver``'s thread per request) and its own pooled connection, so concurrent requests
reach vLLM concurrently and are batched there; nothing in the gateway serialises them.

* The body goes to vLLM as sent, with ``model`` replaced by the internal adapter name (a
  version id) and the few vLLM extensions that change the server's behaviour refused
  (``DENIED_PARAMETERS``). Answers carry the ``model`` the caller asked for.
* SSE streams are relayed event by event as vLLM produces them.
* Errors: unknown model 404 (with the names the caller can use); vLLM down or starting 503
  with ``Retry-After``; over the context length 400 ``context_length_exceeded`` with vLLM's
  reason; vLLM too slow 504; a vLLM 5xx 502. A version vLLM does not hold yet (an alias
  moved a moment ago, vLLM restarted) is loaded on the spot and the request retried once.
* Every answer of a version, and every error vLLM returns for it, adds to its ``VersionTraffic``
  (requests refused before vLLM, e.g. 503 while it starts, are not counted); a routed request
  may be mirrored to the route's shadow version afterwards (``inference.shadow``), and to the
  latency histograms below (total, and time to the first token of a stream; docs/observability.md).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from prometheus_client import Histogram

from inference import limits
from inference.adapters import ensure_loaded
from inference.models import ServingProcess
from inference.resolve import Target, resolve_target
from inference.shadow import submit_shadow
from inference.vllm_http import VllmError, client_for, error_message
from registry.models import ModelVersion
from registry.services.traffic import traffic_record
from tuninglab.errors import ApiError, InvalidRequestError, ServiceUnavailableError

log = logging.getLogger(__name__)
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# vLLM request extensions that reach past one answer (templates, server-side plugins,
# scheduling, KV transfer): refused, not silently dropped.
DENIED_PARAMETERS = frozenset(
    {"chat_template", "logits_processors", "kv_transfer_params", "vllm_xargs", "priority", "lora_request"}
)
ROUTE_KEY_HEADER = "X-Route-Key"

# Latency per version as callers see it, kept by prometheus_client in this process's memory, or
# in files under PROMETHEUS_MULTIPROC_DIR when that is set (several gunicorn workers; `/metrics`
# merges them). Buckets span a cached short answer to the request timeout's default.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
REQUEST_SECONDS = Histogram(
    "tuninglab_gateway_request_seconds",
    "Gateway requests to a version, from arrival to the last byte (errors vLLM returned included).",
    ["owner", "model", "version", "stream"],
    buckets=LATENCY_BUCKETS,
)
FIRST_TOKEN_SECONDS = Histogram(
    "tuninglab_gateway_first_token_seconds",
    "Streamed gateway requests to a version, from arrival to the first generated text.",
    ["owner", "model", "version"],
    buckets=LATENCY_BUCKETS,
)


class UpstreamError(ApiError):
    status = 502
    type = "server_error"
    default_code = "upstream_error"


def _unavailable(base_name: str, why: str) -> ServiceUnavailableError:
    retry = str(settings.TUNINGLAB["INFERENCE_RETRY_AFTER_SECONDS"])
    return ServiceUnavailableError(
        f"The inference server for {base_name} is not available: {why}.",
        code="inference_unavailable",
        suggestion=f"Retry in {retry} s. Operators: `manage.py serve_inference` runs and supervises vLLM.",
        headers={"Retry-After": retry},
    )


def _check_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    denied = sorted(DENIED_PARAMETERS & body.keys())
    if denied:
        raise InvalidRequestError(
            f"Parameter {denied[0]!r} is not accepted by this gateway.", code="unsupported_parameter", param=denied[0]
        )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequestError("'stream' must be true or false.", code="invalid_type", param="stream")
    return body


def _check_ready(target: Target) -> None:
    if target.serving_status_read:  # read with the version, in the same query
        status = target.serving_status
    else:
        row = ServingProcess.objects.filter(base_name=target.base.name).only("status").first()
        status = row.status if row is not None else None
    if status is not None and status != ServingProcess.Status.READY:
        raise _unavailable(target.base.name, f"vLLM is {status}")


def _map_error(response: httpx.Response, target: Target, param: str) -> ApiError:
    message = error_message(response).replace(target.vllm_model, target.requested)
    if response.status_code == 400 and "context length" in message:
        return InvalidRequestError(message, code="context_length_exceeded", param=param)
    if response.status_code < 500:
        return ApiError(message, code="invalid_request", status=response.status_code)
    return UpstreamError(f"vLLM failed: {message}")


def _not_loaded(response: httpx.Response, target: Target) -> bool:
    return response.status_code == 404 and target.version is not None and "does not exist" in error_message(response)


def sticky_keys(request: Any, body: dict[str, Any]) -> dict[str, str | None]:
    """The key a route of each ``sticky`` kind uses for this request (None: draw at random)."""
    user = body.get("user")
    return {
        "user": user if isinstance(user, str) and user else None,
        "header": request.headers.get(ROUTE_KEY_HEADER) or None,
        "api_key": str(getattr(request.auth, "pk", "")) or None,
        "none": None,
    }


def _send(target: Target, path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
    """POST to vLLM (loading a pinned version it does not hold, then retrying once)."""
    client = client_for(target.base)
    upstream = {**body, "model": target.vllm_model}
    for attempt in range(2):
        try:
            response = client.send(client.build_request("POST", path, json=upstream), stream=stream)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise _unavailable(target.base.name, "vLLM does not accept connections") from exc
            raise ApiError(
                "vLLM did not answer in time.",
                code="upstream_timeout",
                status=504,
                suggestion="Ask for fewer tokens (max_tokens) or raise TUNINGLAB_INFERENCE_REQUEST_TIMEOUT_SECONDS.",
            ) from exc
        except httpx.TransportError as exc:
            raise _unavailable(target.base.name, "vLLM is not running") from exc
        if attempt == 0 and _not_loaded_peek(response, target):
            try:
                ensure_loaded(target.base, target.version)
            except VllmError as exc:
                raise UpstreamError(f"vLLM could not load {target.requested}: {exc}") from exc
            continue
        return response
    return response


def _not_loaded_peek(response: httpx.Response, target: Target) -> bool:
    if response.status_code != 404 or target.version is None:
        return False
    response.read()
    if _not_loaded(response, target):
        response.close()
        return True
    return False


def proxy(request: Any, body: Any, endpoint: str) -> HttpResponse:
    """Serve one ``/v1/chat/completions`` (``endpoint="chat"``) or ``/v1/completions`` request."""
    body = _check_body(body)
    target = resolve_target(owner=request.user, model=body.get("model"), sticky_keys=sticky_keys(request, body))
    _check_ready(target)
    path = ENDPOINTS[endpoint]
    param = "messages" if endpoint == "chat" else "prompt"
    started = time.monotonic()
    limits.acquire(request.user.pk)
    if body.get("stream"):
        try:
            return _proxy_stream(request, body, target, path, param, started)
        except BaseException:
            limits.release(request.user.pk)  # no stream to release it at its end
            raise
    try:
        response = _send(target, path, body, stream=False)
    finally:
        limits.release(request.user.pk)
    if response.status_code != 200:
        _record(target, started, owner=request.user, error=True)
        raise _map_error(response, target, param)
    data = response.json()
    data["model"] = target.requested
    usage = data.get("usage") or {}
    _record(target, started, owner=request.user, usage=usage)
    _maybe_shadow(request, target, endpoint, body, _output_text(data))
    return JsonResponse(data)


def _proxy_stream(request: Any, body: dict[str, Any], target: Target, path: str, param: str, started: float):
    wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream_body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    response = _send(target, path, upstream_body, stream=True)
    if response.status_code != 200:
        response.read()
        response.close()
        _record(target, started, owner=request.user, error=True, stream=True)
        raise _map_error(response, target, param)
    events = _Relay(request, response, target, body, path, started, wants_usage=wants_usage)
    streamed = StreamingHttpResponse(events, content_type="text/event-stream")
    streamed["Cache-Control"] = "no-cache"
    streamed["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return streamed


class _Relay:
    """The SSE relay as Django streams it, event by event.

    ``close()`` (Django calls it when the response ends, also when the client went away
    before the first event) releases the upstream response and the owner's slot exactly once,
    whether or not iteration ever started: a generator's ``finally`` alone would not run then.
    """

    def __init__(
        self,
        request: Any,
        response: httpx.Response,
        target: Target,
        body: dict[str, Any],
        path: str,
        started: float,
        *,
        wants_usage: bool,
    ) -> None:
        self.request, self.response, self.target, self.body, self.path = request, response, target, body, path
        self.started, self.wants_usage = started, wants_usage
        self.usage: dict[str, Any] = {}
        self.pieces: list[str] = []
        self.error = False
        self.first_token_seen = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._events()
        finally:
            self.close()
        if not self.error:
            endpoint = "chat" if self.path == ENDPOINTS["chat"] else "completions"
            mirrored = {k: v for k, v in self.body.items() if k != "stream_options"}
            _maybe_shadow(self.request, self.target, endpoint, mirrored, "".join(self.pieces))

    def _events(self) -> Iterator[bytes]:
        try:
            for line in self.response.iter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: ") :]
                if payload.strip() == "[DONE]":
                    yield b"data: [DONE]\n\n"
                    continue
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    yield f"data: {payload}\n\n".encode()
                    continue
                if chunk.get("usage"):
                    self.usage = chunk["usage"]
                if "error" in chunk:
                    self.error = True
                chunk["model"] = self.target.requested
                texts = [_delta_text(choice) for choice in chunk.get("choices") or []]
                self.pieces += texts
                if not self.first_token_seen and any(texts):
                    self.first_token_seen = True
                    _observe_first_token(self.target, self.started, owner=self.request.user)
                if not self.wants_usage:
                    if chunk.get("usage") and not chunk.get("choices"):
                        continue  # the usage-only chunk we asked for; the caller did not
                    chunk.pop("usage", None)
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
        except httpx.HTTPError as exc:
            self.error = True
            failure = {
                "error": {"message": f"vLLM stream broke: {exc}", "type": "server_error", "code": "upstream_error"}
            }
            yield f"data: {json.dumps(failure)}\n\n".encode()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.response.close()
        limits.release(self.request.user.pk)  # the slot taken in proxy()
        _record(self.target, self.started, owner=self.request.user, usage=self.usage, error=self.error, stream=True)


def _delta_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    return str(delta.get("content") or choice.get("text") or "")


def _output_text(data: dict[str, Any]) -> str:
    choices = data.get("choices") or [{}]
    first = choices[0]
    message = first.get("message") or {}
    return str(message.get("content") or first.get("text") or "")


def _version_labels(version: ModelVersion, owner: Any) -> list[str]:
    # resolve_target only ever finds the caller's own versions (with their registered model
    # joined), so these labels cost no query.
    return [owner.username, version.registered_model.name, str(version.version)]


def _observe_first_token(target: Target, started: float, *, owner: Any) -> None:
    if target.version is not None:
        FIRST_TOKEN_SECONDS.labels(*_version_labels(target.version, owner)).observe(time.monotonic() - started)


def _record(
    target: Target,
    started: float,
    *,
    owner: Any,
    usage: dict[str, Any] | None = None,
    error: bool = False,
    stream: bool = False,
) -> None:
    if target.version is None:
        return
    usage = usage or {}
    elapsed = time.monotonic() - started
    REQUEST_SECONDS.labels(*_version_labels(target.version, owner), str(stream).lower()).observe(elapsed)
    try:
        with transaction.atomic():
            _commit_without_waiting_for_disk()
            traffic_record(
                version_id=target.version.id,
                latency_ms=elapsed * 1000,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                error=error,
            )
    except Exception:  # counters must never fail an answer
        log.exception("could not record traffic of %s", target.version.id)


def _commit_without_waiting_for_disk() -> None:
    """Let this transaction's COMMIT return before PostgreSQL has flushed its WAL to disk.

    Each answer's counter update is one committed write; waiting for the WAL flush (fdatasync)
    cost 4 ms median, 10 ms p90 on the benchmark host, on the critical path of every answer
    (benchmarks/serving.py). Counters are live statistics: a PostgreSQL crash may lose the last
    fraction of a second of them, never consistency (``synchronous_commit = off``, this
    transaction only). Other databases keep their default.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _maybe_shadow(request: Any, target: Target, endpoint: str, body: dict[str, Any], output: str) -> None:
    route = target.route
    if route is None or route.shadow_version_id is None or route.shadow_percent <= 0:
        return
    if random.random() * 100 >= route.shadow_percent:  # noqa: S311 - sampling, not security
        return
    submit_shadow(
        owner_id=request.user.pk,
        route=route,
        primary=target,
        endpoint=endpoint,
        body={k: v for k, v in body.items() if k != "stream"},
        primary_output=output,
    )
