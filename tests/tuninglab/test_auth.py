"""API keys: the create_api_key contract, hashing at rest, revoke/wrong/missing key → 401, throttling."""

from __future__ import annotations

import io

import pytest
import redis
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tuninglab import throttling
from tuninglab.models import ApiKey
from tuninglab.selectors import api_key_get_active, hash_key
from tuninglab.services import api_key_create, api_key_revoke
from tuninglab.throttling import ApiKeyRateThrottle

pytestmark = pytest.mark.django_db

WHOAMI = "/test/whoami"


def _run_create_api_key(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue().rstrip("\n").split("\n")


def _bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _assert_error_shape(body: dict, *, type_: str, code: str) -> None:
    assert set(body) == {"error"}
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    assert err["type"] == type_
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]


def test_it_prints_the_new_key_alone_on_the_last_line_and_creates_the_user():
    lines = _run_create_api_key("bob", "--name", "laptop")
    raw = lines[-1]
    assert len(lines) >= 2, "info lines come before the key"
    assert raw.startswith("tl-") and " " not in raw and len(raw) > 40
    user = get_user_model().objects.get(username="bob")
    assert not user.has_usable_password()
    key = ApiKey.objects.get(owner=user)
    assert key.name == "laptop"
    assert key.key_hash == hash_key(raw)
    assert raw.startswith(key.prefix)


def test_it_reuses_an_existing_user_and_issues_distinct_keys(user):
    first = _run_create_api_key(user.username)[-1]
    second = _run_create_api_key(user.username)[-1]
    assert first != second
    assert get_user_model().objects.filter(username=user.username).count() == 1
    assert ApiKey.objects.filter(owner=user).count() == 2


def test_it_rejects_an_invalid_username_without_writing_anything():
    with pytest.raises(CommandError, match="Invalid username"):
        _run_create_api_key("bad name!")
    assert not get_user_model().objects.exists()
    assert not ApiKey.objects.exists()


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_authenticates_the_printed_key_against_the_api():
    raw = _run_create_api_key("carol")[-1]
    response = _bearer(raw).get(WHOAMI)
    assert response.status_code == 200
    assert response.json()["username"] == "carol"
    assert ApiKey.objects.get(owner__username="carol").last_used_at is not None


def test_it_authenticates_the_printed_key_against_the_jobs_api():
    raw = _run_create_api_key("dave")[-1]
    assert _bearer(raw).get("/v1/tunings.list").status_code == 200
    assert APIClient().get("/v1/tunings.list").status_code == 401


def test_it_never_stores_the_raw_key_anywhere_in_the_database(user):
    raws = [_run_create_api_key("erin")[-1], api_key_create(owner=user, name="svc")[1]]
    for model in apps.get_models():
        for row in model.objects.all().values_list():
            dumped = repr(row)
            for raw in raws:
                assert raw not in dumped, f"raw key found in {model.__name__}"
                # the secret part without the public prefix must not appear either
                assert raw[10:] not in dumped, f"key secret found in {model.__name__}"


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_answers_401_in_the_error_shape_for_a_revoked_key(user):
    row, raw = api_key_create(owner=user)
    client = _bearer(raw)
    assert client.get(WHOAMI).status_code == 200
    api_key_revoke(key=row)
    response = client.get(WHOAMI)
    assert response.status_code == 401
    _assert_error_shape(response.json(), type_="authentication_error", code="authentication_failed")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_finds_a_key_by_its_secret_only_while_it_is_active(user):
    row, raw = api_key_create(owner=user)
    assert api_key_get_active(raw_key=raw) == row
    assert api_key_get_active(raw_key=raw + "x") is None
    api_key_revoke(key=row)
    assert api_key_get_active(raw_key=raw) is None


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_keeps_the_first_revocation_time(user):
    row, _ = api_key_create(owner=user)
    first = api_key_revoke(key=row).revoked_at
    assert api_key_revoke(key=ApiKey.objects.get(pk=row.pk)).revoked_at == first


@pytest.mark.urls("tests.tuninglab.urls")
@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Bearer tl-not-a-real-key", "authentication_failed"),
        ("Bearer", "authentication_failed"),
        ("Bearer a b", "authentication_failed"),
    ],
)
def test_it_answers_401_for_a_missing_wrong_or_malformed_key(header, code, user):
    api_key_create(owner=user)  # a real key exists; the wrong one must still fail
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(WHOAMI)
    assert response.status_code == 401
    _assert_error_shape(response.json(), type_="authentication_error", code=code)


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_rejects_the_key_of_a_deactivated_user(user):
    _, raw = api_key_create(owner=user)
    user.is_active = False
    user.save()
    assert _bearer(raw).get(WHOAMI).status_code == 401


@pytest.fixture
def low_rate(settings, monkeypatch):
    """3 requests a minute, and a clock frozen 5 s into a window so the test cannot straddle one."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api_key": "3/min"}}
    clock = {"now": 60.0 * 29_000_000 + 5.0}
    monkeypatch.setattr(ApiKeyRateThrottle, "timer", staticmethod(lambda: clock["now"]))
    return clock


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_throttles_per_key_with_429_and_retry_after(user, other_user, low_rate):
    _, raw = api_key_create(owner=user)
    _, other_raw = api_key_create(owner=other_user)
    client, other = _bearer(raw), _bearer(other_raw)
    assert [client.get(WHOAMI).status_code for _ in range(3)] == [200, 200, 200]
    response = client.get(WHOAMI)
    assert response.status_code == 429
    _assert_error_shape(response.json(), type_="rate_limit_error", code="rate_limit_exceeded")
    assert response["Retry-After"] == "55"  # the window ends 55 s after the frozen clock
    # Another key has its own bucket.
    assert other.get(WHOAMI).status_code == 200
    # The next window lets the first key through again.
    low_rate["now"] += 60
    assert client.get(WHOAMI).status_code == 200


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_gives_two_keys_of_one_user_separate_buckets(user, low_rate):
    a, b = _bearer(api_key_create(owner=user)[1]), _bearer(api_key_create(owner=user)[1])
    for _ in range(3):
        assert a.get(WHOAMI).status_code == 200
    assert a.get(WHOAMI).status_code == 429
    assert b.get(WHOAMI).status_code == 200


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_does_not_throttle_the_health_check(low_rate):
    client = APIClient()
    assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5


@pytest.mark.urls("tests.tuninglab.urls")
def test_it_lets_requests_through_unthrottled_while_the_counter_cache_is_down(user, low_rate, monkeypatch):
    def refused(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(throttling.cache, "add", refused)
    client = _bearer(api_key_create(owner=user)[1])
    # Over the 3/min limit and still 200: a Redis outage must not turn every API call into a 500.
    assert [client.get(WHOAMI).status_code for _ in range(5)] == [200] * 5
