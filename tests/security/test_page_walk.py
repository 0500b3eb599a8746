"""Walk every web page route (``webui:``, ``playground:`` and the login pages): a login redirect
when logged out, a 404 for another owner's object, an answer for the owner.

The API walk (``test_route_walk.py``) checks API keys (401) and leaves these routes to this
file: pages log in with a session, so a logged-out request is sent to the login page, not
answered 401. A new page route must be listed in ``PAGES`` to pass ``test_it_knows_every_page_route``.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from playground.services import chat_session_create
from tests.security.objects import make_owned_objects
from tests.security.test_route_walk import AUTH_PAGES, PAGE_NAMESPACES, all_route_names

# route name -> (method, URL kwargs from path_parameters(), form body, owned); a body value
# names a path parameter, or is sent as it is.
PAGES: dict[str, tuple[str, tuple[str, ...], dict[str, str], bool]] = {
    "webui:job-list": ("get", (), {}, False),
    "webui:job-detail": ("get", ("job_id",), {}, True),
    "webui:job-live": ("get", ("job_id",), {}, True),
    "webui:job-curves-svg": ("get", ("job_id",), {}, True),
    "webui:job-cancel": ("post", ("job_id",), {}, True),
    "webui:model-list": ("get", (), {}, False),
    "webui:model-detail": ("get", ("name",), {}, True),
    "webui:model-live": ("get", ("name",), {}, True),
    "webui:model-promote": ("post", ("name",), {"version": "version", "alias": "alias"}, True),
    "webui:model-rollback": ("post", ("name",), {"alias": "alias"}, True),
    "playground:index": ("get", (), {}, False),
    "playground:create": ("post", (), {"model": "name", "temperature": "0", "max_tokens": "16"}, False),
    "playground:session": ("get", ("session_id",), {}, True),
    "playground:send": ("post", ("session_id",), {"content": "content"}, True),
    "playground:delete": ("post", ("session_id",), {}, True),
}


class Objects:
    """An owner's objects as the API walk builds them, plus a playground session."""

    def __init__(self, owned, session_id: str) -> None:
        self.owner = owned.owner
        self._values = {**owned.path_parameters(), "session_id": session_id, "content": "Who are you?"}

    def path_parameters(self) -> dict[str, str]:
        return self._values


def call(client: Client, name: str, objects: Objects) -> object:
    method, kwargs, body, _ = PAGES[name]
    values = objects.path_parameters()
    url = reverse(name, kwargs={key: values[key] for key in kwargs})
    if method == "get":
        return client.get(url)
    return client.post(url, {key: values.get(ref, ref) for key, ref in body.items()})


def _objects(owned) -> Objects:
    session = chat_session_create(owner=owned.owner, model=owned.model_name)
    return Objects(owned, session.id)


@pytest.fixture
def alice(db, user, tmp_path, settings) -> Objects:
    settings.TUNINGLAB_INPROCESS_WORKER = False
    return _objects(make_owned_objects(owner=user, root=tmp_path))


@pytest.fixture
def mallory(db, other_user, tmp_path) -> Objects:
    return _objects(make_owned_objects(owner=other_user, root=tmp_path, model_name="mallory-bot"))


def test_it_knows_every_page_route():
    pages = {name for name in all_route_names() if name.startswith(PAGE_NAMESPACES)}
    assert pages == set(PAGES)
    assert set(all_route_names()) >= AUTH_PAGES


def test_every_page_redirects_to_the_login_when_logged_out(alice):
    anonymous = Client()
    for name in PAGES:
        response = call(anonymous, name, alice)
        assert response.status_code == 302, name
        assert response["Location"].startswith("/accounts/login/?next="), name
    assert anonymous.get(reverse("login")).status_code == 200
    response = anonymous.get(reverse("password_change"))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")


def test_every_owned_object_is_a_404_page_for_another_owner_and_found_by_its_owner(alice, mallory):
    thief, owner = Client(), Client()
    thief.force_login(mallory.owner)
    owner.force_login(alice.owner)
    for name, (_, _, _, owned) in PAGES.items():
        if owned:
            assert call(thief, name, alice).status_code == 404, f"{name}: mallory asks for alice's object"
        response = call(owner, name, alice)
        assert response.status_code in {200, 302}, (name, response.status_code)
