"""A NUL character (U+0000) anywhere a request carries text is a 400, never a 500.

PostgreSQL text and jsonb columns cannot hold NUL, so on PostgreSQL each of these requests was a
500 (psycopg ``DataError``) before the guards: ``tuninglab.middleware.RejectNulMiddleware`` for
the path, query string and form bodies, ``tuninglab.parsers.BoundedJSONParser`` for JSON bodies.
The tests run on both databases; the 500s only ever happened on PostgreSQL (found by
tests/security/test_schemathesis.py in the PostgreSQL pass and a probe of every text field).
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from tests.helpers import record_dispatches
from tests.security.objects import OwnedObjects, make_owned_objects
from tunings.models import TuningJob

NUL = "x\x00y"


@pytest.fixture
def alice(db, user, tmp_path, monkeypatch, settings) -> OwnedObjects:
    record_dispatches(monkeypatch, settings)
    return make_owned_objects(owner=user, root=tmp_path)


@pytest.fixture
def client(api_client, alice):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.raw_key}")
    return api_client


def _assert_refused(response, code: str) -> None:
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["code"] == code, error


@pytest.mark.parametrize(
    "url",
    [
        "/v1/files?" + urlencode({"after": NUL}),
        "/v1/tunings.list?" + urlencode({"model": NUL}),
        "/v1/fine_tuning/jobs?" + urlencode({"metadata[k]": NUL}),
        "/v1/models/secret-bot/aliases/x%00y/history",
        "/v1/models/x%00y/versions",
    ],
)
def test_it_refuses_a_nul_in_the_path_or_the_query(client, url):
    _assert_refused(client.get(url), "invalid_character")


def test_it_refuses_a_nul_in_a_form_body(client, alice):
    response = client.post(
        f"/v1/models/{alice.model_name}/promote",
        urlencode({"version": 1, "alias": "staging", "reason": NUL}),
        content_type="application/x-www-form-urlencoded",
    )
    _assert_refused(response, "invalid_character")


def test_it_refuses_a_nul_in_a_json_body(client, alice):
    job = {"model": "fake-llama", "training_file": alice.file.id, "metadata": {"k": NUL}}
    _assert_refused(client.post("/v1/fine_tuning/jobs", job, format="json"), "invalid_character")
    promote = {"version": 1, "alias": "staging", "reason": NUL}
    _assert_refused(client.post(f"/v1/models/{alice.model_name}/promote", promote, format="json"), "invalid_character")
    assert TuningJob.objects.filter(owner=alice.owner).count() == 1  # only the fixture's job
