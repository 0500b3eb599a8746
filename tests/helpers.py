"""Small helpers shared by test suites."""

from __future__ import annotations

import os
import sys
import types

import pytest
from django.db import connection


def require_postgres() -> None:
    """Skip unless the test database is PostgreSQL — but *fail* in CI (``CI=true``).

    Some guarantees (row locks, concurrent unique inserts) only mean something on PostgreSQL;
    a CI run that silently skipped them would report a green it did not earn.
    """
    if connection.vendor == "postgresql":
        return
    message = f"needs PostgreSQL (DATABASE_URL); the test database is {connection.vendor}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true forbids skipping it")
    pytest.skip(message)


def require_redis() -> str:
    """Return ``REDIS_URL`` when a Redis answers there; skip otherwise — but *fail* in CI (``CI=true``).

    Added by the workers suite (real Celery workers need a real broker).
    """
    url = os.environ.get("REDIS_URL", "")
    problem = "" if url else "REDIS_URL is not set"
    if url:
        try:
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except Exception as exc:  # any connection problem means: no usable broker
            problem = f"Redis at {url} does not answer ({exc})"
    if not problem:
        return url
    message = f"needs Redis: {problem}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true forbids skipping it")
    pytest.skip(message)
    return ""


def record_dispatches(monkeypatch: pytest.MonkeyPatch, settings) -> list[tuple[str, str]]:
    """Replace ``workers.dispatch`` for one test with a recorder of ``(job_id, queue)`` calls.

    Jobs then stay ``queued``: API tests run fast and leave no training processes behind.
    Shared by the api and sdk suites (their ``dispatched`` / ``no_worker`` fixtures).
    """
    settings.TUNINGLAB_INPROCESS_WORKER = False
    calls: list[tuple[str, str]] = []
    fake = types.ModuleType("workers.dispatch")
    fake.dispatch_tuning_job = lambda job_id, queue: calls.append((job_id, queue))
    monkeypatch.setitem(sys.modules, "workers.dispatch", fake)
    import workers

    monkeypatch.setattr(workers, "dispatch", fake, raising=False)
    return calls
