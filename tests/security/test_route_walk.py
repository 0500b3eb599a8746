"""Walk the whole URL conf: every API route refuses a missing or revoked key (401) and hides
another owner's objects (404); every admin page is for staff only.

``ROUTES`` says, per route name, how to fill its URL and which method to try. A route that is
not in the table fails ``test_it_knows_every_route``: a new endpoint must say here how it is
protected before it can ship.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from tests.security.objects import OwnedObjects, make_owned_objects
from tuninglab.models import ApiKey
from tuninglab.services import api_key_revoke


@dataclass(frozen=True)
class Route:
    """How to call one route. ``kwargs``: URL keyword -> OwnedObjects.path_parameters() key.
    ``public``: needs no key (health, schema, docs, metrics). ``owned``: the request names an
    object of its owner (404 for anyone else); ``query``/``body`` name it when the URL does not."""

    method: str = "get"
    kwargs: tuple[str, ...] = ()
    public: bool = False
    owned: bool = False
    query: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


ROUTES: dict[str, Route] = {
    "healthz": Route(public=True),
    "schema": Route(public=True),
    "swagger-ui": Route(public=True),
    "prometheus-django-metrics": Route(public=True),
    # files
    "file-collection": Route(),
    "file-detail": Route(kwargs=("file_id",), owned=True),
    "file-content": Route(kwargs=("file_id",), owned=True),
    # jobs, seed style (ids in the query or the body)
    "tunings-create": Route(method="post", owned=True, body={"training_file": "file_id", "model": "fake-llama"}),
    "tunings-get": Route(owned=True, query={"job_id": "job_id"}),
    "tunings-list": Route(),
    "tunings-cancel": Route(method="post", owned=True, body={"job_id": "job_id"}),
    # jobs, resource and OpenAI style
    "tuning-collection": Route(),
    "tuning-detail": Route(kwargs=("job_id",), owned=True),
    "tuning-cancel": Route(method="post", kwargs=("job_id",), owned=True),
    "tuning-events": Route(kwargs=("job_id",), owned=True),
    "tuning-checkpoints": Route(kwargs=("job_id",), owned=True),
    "ft-collection": Route(),
    "ft-detail": Route(kwargs=("job_id",), owned=True),
    "ft-cancel": Route(method="post", kwargs=("job_id",), owned=True),
    "ft-events": Route(kwargs=("job_id",), owned=True),
    "ft-checkpoints": Route(kwargs=("job_id",), owned=True),
    # registry
    "models-list": Route(),
    "model-detail": Route(kwargs=("model_id",), owned=True),
    "model-versions": Route(kwargs=("name",), owned=True),
    "model-version-detail": Route(kwargs=("name", "version"), owned=True),
    "model-version-evaluations": Route(kwargs=("name", "version"), owned=True),
    "model-promote": Route(method="post", kwargs=("name",), owned=True, body={"version": "version"}),
    "model-rollback": Route(method="post", kwargs=("name",), owned=True),
    "model-aliases": Route(kwargs=("name",), owned=True),
    "model-alias-history": Route(kwargs=("name", "alias"), owned=True),
    "model-comparisons": Route(
        method="post",
        kwargs=("name",),
        owned=True,
        body={"version_a": "base", "version_b": "version", "file": "file_id"},
    ),
    "evaluation-detail": Route(kwargs=("evaluation_id",), owned=True),
    "comparison-detail": Route(kwargs=("comparison_id",), owned=True),
    "comparison-report": Route(kwargs=("comparison_id",), owned=True),
    # inference
    "chat-completions": Route(
        method="post", owned=True, body={"model": "name", "messages": [{"role": "user", "content": "hi"}]}
    ),
    "completions": Route(method="post", owned=True, body={"model": "name", "prompt": "hi"}),
    "generate": Route(method="post", owned=True, query={"adapter": "name"}, body={"prompt": "hi"}),
    "serving-status": Route(),
    "model-route": Route(kwargs=("name",), owned=True),
    "model-traffic": Route(kwargs=("name",), owned=True),
    "model-shadow-records": Route(kwargs=("name",), owned=True),
}
ADMIN_PLACEHOLDERS = {"object_id": "1", "id": "1", "content_type_id": "1", "app_label": "tunings", "url": "nowhere/"}


def _walk(resolver: URLResolver, prefix: str = "", namespace: str | None = None):
    """Every URLPattern under ``resolver``: (qualified name, route text), recursively."""
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry, prefix + str(entry.pattern), entry.namespace or namespace)
        elif isinstance(entry, URLPattern):
            name = f"{namespace}:{entry.name}" if namespace else entry.name
            yield name, prefix + str(entry.pattern)


def _all_routes() -> list[tuple[str | None, str]]:
    return list(_walk(get_resolver()))


def _admin_url(route_text: str) -> str:
    """A concrete URL for an admin route: converters and groups filled with placeholders."""
    text = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ADMIN_PLACEHOLDERS[m.group(1)], route_text)
    text = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: ADMIN_PLACEHOLDERS[m.group(1)], text)
    return "/" + text.lstrip("^").rstrip("$")


def _url(name: str, route: Route, objects: OwnedObjects) -> str:
    values = objects.path_parameters()
    return reverse(name, kwargs={key: values[key] for key in route.kwargs})


def _call(client: APIClient, name: str, route: Route, objects: OwnedObjects) -> Any:
    values = objects.path_parameters()
    query = {key: values[ref] for key, ref in route.query.items()}
    body = {key: values.get(ref, ref) if isinstance(ref, str) else ref for key, ref in route.body.items()}
    url = _url(name, route, objects)
    if route.method == "get":
        return client.get(url, query)
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return getattr(client, route.method)(url, body, format="json")


def _assert_error(response: Any, status: int, context: str) -> None:
    assert response.status_code == status, f"{context}: {response.status_code} {response.content[:300]!r}"
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), context


@pytest.fixture
def alice(db, user, tmp_path, settings) -> OwnedObjects:
    settings.TUNINGLAB_INPROCESS_WORKER = False
    return make_owned_objects(owner=user, root=tmp_path)


@pytest.fixture
def mallory(db, other_user, tmp_path) -> OwnedObjects:
    return make_owned_objects(owner=other_user, root=tmp_path, model_name="mallory-bot")


# Web pages (session login, not API keys): tests/security/test_page_walk.py walks them.
PAGE_NAMESPACES = ("webui:", "playground:")
AUTH_PAGES = {"login", "logout", "password_change", "password_change_done"}


def all_route_names() -> list[str]:
    """Every named route of the URL conf (the page walk checks its share against this list)."""
    return [name for name, _ in _all_routes() if name]


def test_it_knows_every_route():
    unknown = sorted(
        f"{name} ({text})"
        for name, text in _all_routes()
        if not (name or "").startswith(("admin:", *PAGE_NAMESPACES)) and name not in set(ROUTES) | AUTH_PAGES
    )
    assert not unknown, (
        "Routes the security walk does not know how to check: "
        f"{unknown}. Add each to ROUTES in {__file__} (its kwargs, method, public or owned)."
    )
    stale = sorted(set(ROUTES) - {name for name, _ in _all_routes()})
    assert not stale, f"ROUTES lists routes that no longer exist: {stale}"


def test_every_api_route_answers_401_without_a_key_and_with_a_revoked_one(alice):
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.raw_key}")
    api_key_revoke(key=ApiKey.objects.get(owner=alice.owner, name="security"))
    anonymous = APIClient()
    checked = 0
    for name, route in ROUTES.items():
        if route.public:
            continue
        _assert_error(_call(anonymous, name, route, alice), 401, f"{name} without a key")
        _assert_error(_call(revoked, name, route, alice), 401, f"{name} with a revoked key")
        checked += 1
    assert checked == sum(1 for r in ROUTES.values() if not r.public) >= 35


def test_every_owned_object_is_a_404_for_another_owner(alice, mallory):
    thief = APIClient()
    thief.credentials(HTTP_AUTHORIZATION=f"Bearer {mallory.raw_key}")
    owner = APIClient()
    owner.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.raw_key}")
    checked = 0
    for name, route in ROUTES.items():
        if not route.owned:
            continue
        _assert_error(_call(thief, name, route, alice), 404, f"{name}: mallory asks for alice's object")
        checked += 1
    assert checked >= 30
    # The same reads by their owner find the objects (the 404s above are about ownership).
    for name in ("file-detail", "ft-detail", "tuning-events", "model-version-detail", "evaluation-detail"):
        response = _call(owner, name, ROUTES[name], alice)
        assert response.status_code == 200, (name, response.content[:300])
    # Mallory's own model answers her (the 404s above are not a broken route).
    assert thief.get(_url("model-versions", ROUTES["model-versions"], mallory)).status_code == 200


def test_every_admin_page_is_for_staff_only(client, user, admin_user):
    user.is_staff = False
    user.save(update_fields=["is_staff"])
    client.force_login(user)
    admin_routes = [(name, text) for name, text in _all_routes() if (name or "").startswith("admin:")]
    assert len(admin_routes) > 40
    login = reverse("admin:login")
    for name, text in admin_routes:
        if name in {"admin:login", "admin:logout"}:
            continue
        url = _admin_url(text)
        response = client.get(url)
        assert response.status_code == 302, f"{name} {url}: {response.status_code}"
        assert response["Location"].startswith(login), f"{name} {url} -> {response['Location']}"
    staff = get_user_model().objects.get(pk=admin_user.pk)
    client.force_login(staff)
    assert client.get(reverse("admin:index")).status_code == 200
