"""GET /healthz: no auth, database + optional Redis."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_it_reports_ok_without_authentication(settings):
    settings.REDIS_URL = ""
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "disabled"}


def test_it_pings_redis_when_configured(settings):
    import redis

    url = "redis://127.0.0.1:6379/4"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings.REDIS_URL = url
    assert APIClient().get("/healthz").json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_it_stays_ready_but_reports_degraded_when_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = APIClient().get("/healthz")
    # The API keeps working without Redis: a readiness probe must not take the node out.
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "database": "ok", "redis": "error"}


def test_it_answers_503_when_the_database_fails(monkeypatch, settings):
    from tuninglab import apis

    settings.REDIS_URL = ""

    class BrokenCursor:
        def __enter__(self):
            raise RuntimeError("db down")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(apis.connection, "cursor", lambda: BrokenCursor())
    response = APIClient().get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "error"
