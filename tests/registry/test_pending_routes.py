"""Inference routes answer a clear 503 until the gateway serves them — not an HTML 404; the
registry routes that used to share that placeholder are served now."""

from __future__ import annotations

import pytest
from tuninglab_sdk import FeatureUnavailableError, TuningLab

from tuninglab.services import api_key_create

pytestmark = pytest.mark.django_db

INFERENCE_ROUTES = [
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
]


@pytest.mark.parametrize(("method", "path"), INFERENCE_ROUTES)
def test_it_answers_503_in_the_error_shape(api_client, method, path):
    response = getattr(api_client, method)(path, {"model": "ft:tiny-llama:alice:x:ftjob-1"}, format="json")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "inference_unavailable"
    assert error["type"] == "server_error"
    assert "not available" in error["message"]


def test_it_serves_the_registry_routes(api_client):
    assert api_client.get("/v1/models").json() == {"object": "list", "data": []}
    missing = api_client.get("/v1/models/alice-tiny-llama/versions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    promote = api_client.post("/v1/models/alice-tiny-llama/promote", {}, format="json")
    assert promote.status_code == 404 and promote.json()["error"]["code"] == "model_not_found"


def test_it_still_requires_an_api_key(client):
    for path in ("/v1/chat/completions", "/v1/models/alice-tiny-llama/promote"):
        response = client.post(path, {}, content_type="application/json")

        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models").status_code == 401


def test_it_raises_feature_unavailable_for_chat_in_the_sdk(live_server, raw_key):
    with TuningLab(base_url=live_server.url, api_key=raw_key, max_retries=0) as sdk:
        with pytest.raises(FeatureUnavailableError):
            sdk.chat.completions.create(
                model="ft:tiny-llama:alice:x:ftjob-1", messages=[{"role": "user", "content": "hi"}]
            )
        assert sdk.models.list() == []


@pytest.fixture
def raw_key(user) -> str:
    return api_key_create(owner=user, name="pending-routes")[1]
