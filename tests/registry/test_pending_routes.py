"""Registry and inference routes answer a clear 503 until they are served — not an HTML 404."""

from __future__ import annotations

import pytest
from tuninglab_sdk import FeatureUnavailableError, TuningLab

from tuninglab.services import api_key_create

pytestmark = pytest.mark.django_db

REGISTRY_ROUTES = [
    ("get", "/v1/models"),
    ("get", "/v1/models/alice-tiny-llama/versions"),
    ("post", "/v1/models/alice-tiny-llama/promote"),
    ("post", "/v1/models/alice-tiny-llama/rollback"),
]
INFERENCE_ROUTES = [
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
]


@pytest.mark.parametrize(("method", "path"), INFERENCE_ROUTES + REGISTRY_ROUTES)
def test_it_answers_503_in_the_error_shape(api_client, method, path):
    response = getattr(api_client, method)(path, {"model": "ft:tiny-llama:alice:x:ftjob-1"}, format="json")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "inference_unavailable"
    assert error["type"] == "server_error"
    assert "not available" in error["message"]


@pytest.mark.parametrize(("method", "path"), REGISTRY_ROUTES)
def test_it_names_the_registry_on_registry_routes(api_client, method, path):
    error = getattr(api_client, method)(path, {}, format="json").json()["error"]

    assert "registry" in error["message"].lower()
    assert "registry" in error["suggestion"].lower()


def test_it_still_requires_an_api_key_on_pending_routes(client):
    for path in ("/v1/chat/completions", "/v1/models/alice-tiny-llama/promote"):
        response = client.post(path, {}, content_type="application/json")

        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


def test_it_raises_feature_unavailable_in_the_sdk(live_server, raw_key):
    with TuningLab(base_url=live_server.url, api_key=raw_key, max_retries=0) as sdk:
        with pytest.raises(FeatureUnavailableError):
            sdk.chat.completions.create(
                model="ft:tiny-llama:alice:x:ftjob-1", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(FeatureUnavailableError):
            sdk.models.list()


@pytest.fixture
def raw_key(user) -> str:
    return api_key_create(owner=user, name="pending-routes")[1]
