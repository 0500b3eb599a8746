"""HTTP to a vLLM server: one pooled ``httpx.Client`` per server, shared by every thread.

The gateway proxies through these clients (``httpx.Client`` is thread-safe and keeps a
connection pool), so concurrent requests reach vLLM concurrently over kept-alive
connections; the supervisor and the reconcile loop use the same helpers for ``/health``,
``/v1/models`` and runtime adapter (un)loading.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from django.conf import settings

from inference.config import VLLM_KEEPALIVE_S, ServedBase, vllm_api_key

CONNECT_TIMEOUT_S = 2.0
# The pool drops a connection idle this long, well before vLLM closes it (VLLM_KEEPALIVE_S):
# a connection the server closes just as a request goes out fails that request.
KEEPALIVE_EXPIRY_S = VLLM_KEEPALIVE_S / 2
ADMIN_TIMEOUT_S = 60.0  # loading an adapter reads its weights

_clients: dict[str, httpx.Client] = {}
_lock = threading.Lock()


class VllmError(Exception):
    """vLLM answered an admin call with an error (``status`` is its HTTP status)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def client_for(base: ServedBase) -> httpx.Client:
    """The shared client for ``base``'s vLLM server (created on first use), sending its API key."""
    url = base.url
    with _lock:
        client = _clients.get(url)
        if client is None or client.is_closed:
            max_conn = settings.TUNINGLAB["INFERENCE_MAX_CONNECTIONS"]
            read_timeout = settings.TUNINGLAB["INFERENCE_REQUEST_TIMEOUT_SECONDS"]
            client = httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {vllm_api_key(base)}"},
                timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(
                    max_connections=max_conn, max_keepalive_connections=max_conn, keepalive_expiry=KEEPALIVE_EXPIRY_S
                ),
                trust_env=False,  # never through an HTTP proxy from the environment: vLLM is local
            )
            _clients[url] = client
        return client


def close_clients() -> None:
    """Close every pooled client (tests, shutdown)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def error_message(response: httpx.Response) -> str:
    """vLLM's error text (``{"error": {"message"}}`` or ``{"message"}`` or the raw body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000]
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(body)[:2000]


def healthy(base: ServedBase, *, timeout: float = 5.0) -> bool:
    """True when ``GET /health`` answers 200 within ``timeout``."""
    try:
        return client_for(base).get("/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def loaded_adapters(base: ServedBase) -> dict[str, str]:
    """``{adapter name: path}`` of the LoRA adapters vLLM has loaded (``/v1/models`` cards with a parent)."""
    response = client_for(base).get("/v1/models", timeout=10.0)
    if response.status_code != 200:
        raise VllmError(error_message(response), status=response.status_code)
    cards: list[dict[str, Any]] = response.json().get("data", [])
    return {card["id"]: card.get("root", "") for card in cards if card.get("parent")}


def load_adapter(base: ServedBase, *, name: str, path: str) -> None:
    """Load the adapter at ``path`` under ``name`` (already loaded under that name: fine)."""
    response = client_for(base).post(
        "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=ADMIN_TIMEOUT_S
    )
    if response.status_code == 200:
        return
    message = error_message(response)
    if response.status_code == 400 and "already been loaded" in message:
        return
    raise VllmError(message, status=response.status_code)


def unload_adapter(base: ServedBase, *, name: str) -> None:
    """Unload ``name`` (not loaded: fine)."""
    response = client_for(base).post("/v1/unload_lora_adapter", json={"lora_name": name}, timeout=ADMIN_TIMEOUT_S)
    if response.status_code in (200, 404):
        return
    raise VllmError(error_message(response), status=response.status_code)
