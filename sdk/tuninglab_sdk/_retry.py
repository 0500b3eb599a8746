"""When to retry, and how long to wait. Shared by the sync and async clients.

Retried: connection errors and timeouts, 408, 429, 5xx (except 501), and 409 only when
the error code says a *concurrent request* holds the resource (the idempotency record of
the same key is still in flight). A 409 that describes the object's state (cancel a
finished job: ``invalid_state``) will answer the same way forever, so it is not retried.
A server may force either way with ``X-Should-Retry: true|false``.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

import httpx

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
# A Retry-After longer than this is not slept through: the error is raised and the caller decides.
MAX_RETRY_AFTER_S = 60.0

RETRYABLE_CONFLICT_CODES = frozenset(
    {
        "idempotency_request_in_progress",
        "idempotency_in_progress",
        "request_in_progress",
        "concurrent_request",
    }
)


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def should_retry_response(response: httpx.Response) -> bool:
    """True when the same request may succeed if sent again."""
    override = response.headers.get("x-should-retry", "").lower()
    if override in {"true", "false"}:
        return override == "true"
    status = response.status_code
    if status in (408, 429):
        return True
    if status == 409:
        return _error_code(response) in RETRYABLE_CONFLICT_CODES
    return status >= 500 and status != 501


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date) or ``retry-after-ms``.

    Returns None when there is no usable header.
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(retry_index: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... capped at 8 s, each scaled by 0.75..1.0.

    The jitter keeps many clients that failed together from retrying in lockstep.
    """
    base = min(INITIAL_BACKOFF_S * (2**retry_index), MAX_BACKOFF_S)
    jitter = (rng or random).random()  # jitter, not cryptography
    return base * (0.75 + 0.25 * jitter)


def retry_delay(retry_index: int, response: httpx.Response | None) -> float | None:
    """How long to sleep before retry number ``retry_index`` (0-based); None means do not retry
    (the server asked for a wait longer than :data:`MAX_RETRY_AFTER_S`)."""
    if response is not None:
        retry_after = parse_retry_after(response.headers)
        if retry_after is not None:
            return retry_after if retry_after <= MAX_RETRY_AFTER_S else None
    return backoff_delay(retry_index)
