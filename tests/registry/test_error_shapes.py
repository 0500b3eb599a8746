"""The model registry and inference routes answer in the API's JSON error shape, never a
framework page, with no vLLM running: 401 without a key, 404 ``model_not_found`` for names that
hold nothing (the gateway's with the names the caller can use), and 503
``inference_unavailable`` with ``Retry-After`` while the served base's vLLM does not listen."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from inference.vllm_http import close_clients
from tests.helpers import free_port

pytestmark = pytest.mark.django_db
INFERENCE_REQUESTS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "2+2=", "max_tokens": 3}),
]


@pytest.fixture(autouse=True)
def nobody_listens(settings, fake_base_model):
    """fake-llama registered and served on a port nothing listens on; Retry-After of 3 s."""
    settings.TUNINGLAB = {
        **settings.TUNINGLAB,
        "INFERENCE_BASE_MODELS": (f"fake-llama:{free_port()}",),
        "INFERENCE_RETRY_AFTER_SECONDS": 3,
    }
    yield
    close_clients()


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


@pytest.mark.parametrize(("path", "body"), INFERENCE_REQUESTS)
def test_it_answers_an_unknown_model_with_404_and_the_names_to_use(api_client, path, body):
    error = error_of(api_client.post(path, {"model": "ft:fake-llama:alice:x:ftjob-1", **body}, format="json"), 404)

    assert (error["code"], error["type"], error["param"]) == ("model_not_found", "invalid_request_error", "model")
    assert error["suggestion"] == "Use one of: fake-llama"


@pytest.mark.parametrize(("path", "body"), INFERENCE_REQUESTS)
def test_it_answers_503_with_retry_after_while_vllm_does_not_listen(api_client, path, body):
    response = api_client.post(path, {"model": "fake-llama", **body}, format="json")

    error = error_of(response, 503)
    assert response["Retry-After"] == "3"
    assert (error["code"], error["type"]) == ("inference_unavailable", "server_error")
    assert error["message"] == "The inference server for fake-llama is not available: vLLM is not running."
    assert error["suggestion"].startswith("Retry in 3 s.")


def test_it_answers_the_registry_routes_for_a_caller_with_no_models(api_client):
    models = api_client.get("/v1/models").json()["data"]
    assert [(m["id"], m["owned_by"], m["type"]) for m in models] == [("fake-llama", "system", "base_model")]
    for response in (
        api_client.get("/v1/models/alice-tiny-llama/versions"),
        api_client.post("/v1/models/alice-tiny-llama/promote", {}, format="json"),
        api_client.get("/v1/models/alice-tiny-llama/route"),
    ):
        assert error_of(response, 404)["code"] == "model_not_found"


def test_it_requires_an_api_key(db):
    client = APIClient()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models/alice-tiny-llama/promote"):
        assert error_of(client.post(path, {}, format="json"), 401)["type"] == "authentication_error"
    for path in ("/v1/models", "/v1/models/alice-tiny-llama/versions", "/v1/models/alice-tiny-llama/traffic"):
        assert error_of(client.get(path), 401)["type"] == "authentication_error"
