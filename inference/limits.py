"""Per-owner cap on requests in flight through one web process's gateway.

Without it one owner's burst of long generations holds every server thread and every vLLM
batch slot, and everyone else waits. Past ``INFERENCE_MAX_CONCURRENT_PER_USER`` requests in
flight (in this process), the next one is refused at once with 429 ``too_many_concurrent_requests``
and ``Retry-After``. Counting is in memory: a crashed process takes its counts with it, so a
count can never leak and lock an owner out.
"""

from __future__ import annotations

import threading
from collections import Counter

from django.conf import settings

from tuninglab.errors import TooManyRequestsError

_in_flight: Counter[int] = Counter()
_lock = threading.Lock()


def acquire(owner_id: int) -> None:
    """Take one of the owner's slots, or raise TooManyRequestsError."""
    limit = settings.TUNINGLAB["INFERENCE_MAX_CONCURRENT_PER_USER"]
    with _lock:
        if _in_flight[owner_id] >= limit:
            raise TooManyRequestsError(
                f"You have {limit} inference requests in flight; wait for one to finish.",
                code="too_many_concurrent_requests",
                suggestion="Lower your client's concurrency or ask an operator to raise "
                "TUNINGLAB_INFERENCE_MAX_CONCURRENT_PER_USER.",
                headers={"Retry-After": "1"},
            )
        _in_flight[owner_id] += 1


def release(owner_id: int) -> None:
    with _lock:
        _in_flight[owner_id] -= 1
        if _in_flight[owner_id] <= 0:
            del _in_flight[owner_id]


def in_flight(owner_id: int) -> int:
    with _lock:
        return _in_flight[owner_id]
