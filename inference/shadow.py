"""Shadow traffic: mirror a routed request to the route's shadow version, record, never return.

The mirror runs after the caller has its answer, on a small pool of threads
(``INFERENCE_SHADOW_WORKERS``) with at most ``INFERENCE_SHADOW_QUEUE`` mirrors waiting: a
flood of shadowed traffic is dropped (and counted in the log), never queued without bound,
and it can never delay or change a primary answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connection

from inference.adapters import adapter_name, ensure_loaded
from inference.models import Route, ShadowRecord
from inference.vllm_http import client_for, error_message
from registry.services.traffic import traffic_record

log = logging.getLogger(__name__)
MAX_RECORDED_CHARS = 20_000

_executor: ThreadPoolExecutor | None = None
_slots: threading.BoundedSemaphore | None = None
_lock = threading.Lock()


def _pool() -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
    global _executor, _slots
    with _lock:
        if _executor is None:
            conf = settings.TUNINGLAB
            _executor = ThreadPoolExecutor(max_workers=conf["INFERENCE_SHADOW_WORKERS"], thread_name_prefix="shadow")
            _slots = threading.BoundedSemaphore(conf["INFERENCE_SHADOW_QUEUE"])
        return _executor, _slots


def submit_shadow(
    *, owner_id: int, route: Route, primary: Any, endpoint: str, body: dict[str, Any], primary_output: str
) -> bool:
    """Queue one mirror of ``body`` to the route's shadow version; False when the queue is full."""
    executor, slots = _pool()
    if not slots.acquire(blocking=False):
        log.warning("shadow queue full: dropped a mirror of %s", primary.requested)
        return False
    job = {
        "owner_id": owner_id,
        "registered_model_id": route.registered_model_id,
        "primary_version_id": primary.version.id if primary.version else None,
        "shadow_version": route.shadow_version,
        "base": primary.base,
        "endpoint": endpoint,
        "body": body,
        "primary_output": primary_output,
    }

    def run() -> None:
        try:
            _mirror(**job)
        except Exception:
            log.exception("shadow mirror of %s failed", primary.requested)
        finally:
            slots.release()
            connection.close()  # this pool thread's connection; the next task opens a fresh one

    executor.submit(run)
    return True


def _mirror(
    *,
    owner_id: int,
    registered_model_id: str,
    primary_version_id: str | None,
    shadow_version: Any,
    base: Any,
    endpoint: str,
    body: dict[str, Any],
    primary_output: str,
) -> None:
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    upstream = {**body, "model": adapter_name(shadow_version), "stream": False}
    started = time.monotonic()
    output, error = "", ""
    try:
        response = client_for(base).post(path, json=upstream)
        if response.status_code == 404 and "does not exist" in error_message(response):
            ensure_loaded(base, shadow_version)
            response = client_for(base).post(path, json=upstream)
        if response.status_code == 200:
            choice = (response.json().get("choices") or [{}])[0]
            output = str((choice.get("message") or {}).get("content") or choice.get("text") or "")
        else:
            error = f"HTTP {response.status_code}: {error_message(response)}"
    except Exception as exc:  # recorded on the row: a shadow failure is data, not an outage
        error = f"{type(exc).__name__}: {exc}"
    latency_ms = (time.monotonic() - started) * 1000
    request = {k: v for k, v in body.items() if k in {"messages", "prompt", "max_tokens", "temperature"}}
    if len(json.dumps(request, ensure_ascii=False)) > MAX_RECORDED_CHARS:
        request = {"truncated": True}
    ShadowRecord.objects.create(
        owner_id=owner_id,
        registered_model_id=registered_model_id,
        primary_version_id=primary_version_id,
        shadow_version=shadow_version,
        endpoint=endpoint,
        request=request,
        primary_output=primary_output[:MAX_RECORDED_CHARS],
        shadow_output=output[:MAX_RECORDED_CHARS],
        shadow_latency_ms=latency_ms,
        error=error[:2000],
    )
    traffic_record(version_id=shadow_version.id, latency_ms=latency_ms, error=bool(error), shadow=True)
