"""Per-API-key rate limiting (429 with ``Retry-After``).

DRF's ``SimpleRateThrottle`` has two problems for us: it reads the rates once, at class
definition (``THROTTLE_RATES = api_settings...``), so a changed setting is ignored until
restart; and it keeps a list of timestamps that it reads, edits and writes back, so two
API processes sharing Redis can both read "9 of 10" and both let a request through. This
throttle reads the rate at call time and counts with ``cache.add`` + ``cache.incr``, which
are atomic on Redis (and under a lock in locmem): a fixed window per key.

A fixed window can let up to twice the rate through around a window boundary; that is the
usual trade for a counter that is exact under concurrency.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisError
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

log = logging.getLogger(__name__)

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"600/min"`` → (600, 60); None or "" → None (no limit). Raises ImproperlyConfigured."""
    if not rate:
        return None
    try:
        num, period = rate.split("/")
        return int(num), _PERIODS[period.strip()[0].lower()]
    except (ValueError, KeyError, IndexError) as exc:
        raise ImproperlyConfigured(f"Bad throttle rate {rate!r}; use N/s, N/min, N/hour or N/day") from exc


class ApiKeyRateThrottle(BaseThrottle):
    """One counter per API key (or per session user / client IP when no key is used)."""

    scope = "api_key"
    timer = staticmethod(time.time)

    def __init__(self) -> None:
        self.wait_seconds: float | None = None

    def get_rate(self) -> str | None:
        """The configured rate for ``scope``, read now (so ``settings`` overrides apply at once)."""
        rates = api_settings.DEFAULT_THROTTLE_RATES or {}
        if self.scope not in rates:
            raise ImproperlyConfigured(f"No throttle rate set for scope {self.scope!r} in DEFAULT_THROTTLE_RATES")
        return rates[self.scope]

    def get_ident_key(self, request: Any) -> str:
        auth = getattr(request, "auth", None)
        key_hash = getattr(auth, "key_hash", None)
        if key_hash:
            # The hash, not the pk: ids are reused after a database reset, hashes never are.
            return f"key-{key_hash[:32]}"
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user-{user.pk}"
        return f"ip-{self.get_ident(request)}"

    def allow_request(self, request: Any, view: Any) -> bool:
        parsed = parse_rate(self.get_rate())
        if parsed is None:
            return True
        limit, duration = parsed
        now = self.timer()
        window = int(now // duration)
        key = f"throttle:{self.scope}:{self.get_ident_key(request)}:{duration}:{window}"
        # add() is a no-op when the counter exists; incr() is atomic. Together they never
        # lose a count, unlike get-then-set.
        try:
            cache.add(key, 0, timeout=duration + 1)
            try:
                count = cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.set(key, 1, timeout=duration + 1)
                count = 1
        except RedisError:
            # The counters live in Redis. While it is down, let requests through unthrottled: the
            # job rows are in PostgreSQL and the sweeper re-sends lost wake-ups, so the API keeps
            # working; failing every request with a 500 would turn a Redis restart into an outage.
            log.warning("throttle counters unavailable (cache down); %s not rate-limited", key)
            return True
        if count <= limit:
            return True
        self.wait_seconds = max((window + 1) * duration - now, 1.0)
        return False

    def wait(self) -> float | None:
        """Seconds until the current window ends (DRF rounds it up into ``Retry-After``)."""
        return self.wait_seconds
