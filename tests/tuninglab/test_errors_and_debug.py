"""DEBUG is off unless asked for, hostile JSON bodies get a 400, and the debug page hides connection URLs."""

from __future__ import annotations

import runpy
import secrets
import sys

import pytest
from django.test import RequestFactory
from django.views.debug import get_default_exception_reporter_filter, technical_500_response

# Random passwords, so the debug page's source excerpts of this file cannot contain them.
PASSWORDS = {name: secrets.token_hex(12) for name in ("db", "redis", "broker", "backend")}
SECRET_URLS = {
    "DATABASE_URL": f"postgres://tl:{PASSWORDS['db']}@db.internal:5432/tuninglab",
    "REDIS_URL": f"redis://:{PASSWORDS['redis']}@cache.internal:6379/0",
    "CELERY_BROKER_URL": f"redis://:{PASSWORDS['broker']}@cache.internal:6379/0",
    "CELERY_RESULT_BACKEND": f"redis://:{PASSWORDS['backend']}@cache.internal:6379/1",
}


def _use_secret_urls(settings) -> None:
    for name, value in SECRET_URLS.items():
        setattr(settings, name, value)
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": SECRET_URLS["REDIS_URL"]}
    }


def _embedded_settings(monkeypatch, **env: str) -> dict:
    """Evaluate ``tuninglab.settings`` afresh under the given env (the loaded settings stay as they are)."""
    for name in ("DEBUG", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_module("tuninglab.settings")


def test_it_turns_debug_off_by_default(monkeypatch):
    assert _embedded_settings(monkeypatch)["DEBUG"] is False


def test_it_turns_debug_on_from_the_environment(monkeypatch):
    assert _embedded_settings(monkeypatch, DEBUG="true")["DEBUG"] is True


def test_it_still_answers_the_test_client_and_localhost_with_debug_off(monkeypatch):
    # Django refuses every host when DEBUG is off and ALLOWED_HOSTS is empty; the embedded
    # default must keep answering local clients (and the test client's "testserver").
    values = _embedded_settings(monkeypatch)
    assert {"localhost", "127.0.0.1", "testserver"} <= set(values["ALLOWED_HOSTS"])
    assert values["SECRET_KEY"]


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"model": "m", "hyperparameters": ' + "[" * 5_000 + "]" * 5_000 + "}",
    ],
    ids=["open-brackets", "nested-objects", "nested-field"],
)
def test_it_answers_400_to_a_deeply_nested_json_body(api_client, body):
    api_client.raise_request_exception = False
    response = api_client.post("/v1/fine_tuning/jobs", body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "nesting_too_deep"
    assert error["param"] is None
    assert error["type"] == "invalid_request_error"
    assert "nested deeper than 64 levels" in error["message"]


def test_it_answers_400_in_the_error_shape_to_malformed_json(api_client):
    api_client.raise_request_exception = False
    response = api_client.post("/v1/fine_tuning/jobs", '{"model": ', content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["param"] is None
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]


def test_it_still_parses_ordinary_nested_json(api_client):
    body = '{"model": "no-such-model", "training_file": "file-x", "metadata": {"a": [[[1]]]}}'
    response = api_client.post("/v1/fine_tuning/jobs", body, content_type="application/json")
    assert response.status_code in {400, 404}
    assert response.json()["error"]["code"] not in {"nesting_too_deep", "invalid_json"}


def test_it_cleanses_connection_urls_in_the_safe_settings(settings):
    _use_secret_urls(settings)
    safe = get_default_exception_reporter_filter().get_safe_settings()
    for name in SECRET_URLS:
        assert safe[name] == "********************", name
    for password in PASSWORDS.values():
        assert password not in repr(safe)


def test_it_keeps_connection_urls_out_of_the_debug_page(settings):
    _use_secret_urls(settings)
    settings.DEBUG = True
    # runserver copies the process environment into request.META.
    request = RequestFactory().get("/boom", **SECRET_URLS)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        response = technical_500_response(request, *sys.exc_info())
    page = response.content.decode()
    assert "boom" in page and "DATABASE_URL" in page
    for password in PASSWORDS.values():
        assert password not in page
