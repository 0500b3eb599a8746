"""The gateway's answers that need no running vLLM: 503 while it is down or starting, 404 for
unknown names, 400 for bodies it refuses, 401 without a key; and the sticky keys of a request."""

from __future__ import annotations

import time

import pytest
from django.test import RequestFactory
from rest_framework.test import APIClient

from inference.gateway import DENIED_PARAMETERS, sticky_keys
from inference.models import ServingProcess
from inference.vllm_http import close_clients
from tests.helpers import free_port

# The registry suite's version fixtures (the F811 noqas below: pytest injects them by name).
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401

pytestmark = pytest.mark.django_db
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(autouse=True)
def nobody_listens(settings, tiny_base):  # noqa: F811
    """A registered, served tiny-llama on a port nothing listens on; Retry-After of 7 s."""
    port = free_port()
    settings.TUNINGLAB = {
        **settings.TUNINGLAB,
        "INFERENCE_BASE_MODELS": (f"tiny-llama:{port}",),
        "INFERENCE_RETRY_AFTER_SECONDS": 7,
    }
    yield port
    close_clients()


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def _unavailable(response, why: str) -> None:
    error = error_of(response, 503)
    assert response["Retry-After"] == "7"
    assert (error["code"], error["type"]) == ("inference_unavailable", "server_error")
    assert error["message"] == f"The inference server for tiny-llama is not available: {why}."
    assert error["suggestion"].startswith("Retry in 7 s.")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES}),
        (CHAT, {"model": "tiny-llama", "messages": MESSAGES, "stream": True}),
        ("/v1/completions", {"model": "tiny-llama", "prompt": "2+2=", "max_tokens": 3}),
        ("/generate", {"prompt": "2+2="}),
    ],
)
def test_it_answers_503_with_retry_after_at_once_when_vllm_is_down(api_client, path, body):
    started = time.monotonic()
    response = api_client.post(path, body, format="json")
    assert time.monotonic() - started < 3.0  # refused connection: no waiting on a timeout
    _unavailable(response, "vLLM is not running")


def test_it_answers_503_for_a_registered_version_when_vllm_is_down(api_client, tiny_adapter_version):  # noqa: F811
    tiny_adapter_version()
    for model in ("bot", "bot@v1"):
        _unavailable(
            api_client.post(CHAT, {"model": model, "messages": MESSAGES}, format="json"), "vLLM is not running"
        )
    response = api_client.post("/generate?adapter=bot", {"prompt": "hi"}, format="json")
    _unavailable(response, "vLLM is not running")


@pytest.mark.parametrize("status", ["starting", "restarting", "waiting", "stopped"])
def test_it_answers_503_saying_what_vllm_is_doing_while_it_is_not_ready(api_client, status):
    ServingProcess.objects.create(base_name="tiny-llama", status=status)
    started = time.monotonic()
    response = api_client.post(CHAT, {"model": "tiny-llama", "messages": MESSAGES}, format="json")
    assert time.monotonic() - started < 3.0
    _unavailable(response, f"vLLM is {status}")


def test_it_tries_vllm_when_the_row_says_ready(api_client):
    ServingProcess.objects.create(base_name="tiny-llama", status="ready")
    _unavailable(
        api_client.post(CHAT, {"model": "tiny-llama", "messages": MESSAGES}, format="json"), "vLLM is not running"
    )


def test_it_answers_404_for_an_unknown_model_listing_the_callers_names(api_client, tiny_adapter_version):  # noqa: F811
    tiny_adapter_version()
    error = error_of(api_client.post(CHAT, {"model": "gpt-4o", "messages": MESSAGES}, format="json"), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert error["suggestion"] == "Use one of: tiny-llama, bot"


def test_it_answers_404_for_another_owners_model(other_api_client, tiny_adapter_version):  # noqa: F811
    tiny_adapter_version()  # alice's bot
    error = error_of(other_api_client.post(CHAT, {"model": "bot", "messages": MESSAGES}, format="json"), 404)
    assert (error["code"], error["suggestion"]) == ("model_not_found", "Use one of: tiny-llama")


@pytest.mark.parametrize("model", [None, 42, ["tiny-llama"]])
def test_it_answers_400_for_a_model_that_is_not_a_name(api_client, model):
    body = {"messages": MESSAGES} if model is None else {"model": model, "messages": MESSAGES}
    error = error_of(api_client.post(CHAT, body, format="json"), 400)
    assert (error["code"], error["param"]) == ("invalid_model", "model")


@pytest.mark.parametrize("body", [[{"model": "tiny-llama"}], "tiny-llama", 3])
def test_it_answers_400_for_a_body_that_is_not_an_object(api_client, body):
    for path in (CHAT, "/v1/completions"):
        error = error_of(api_client.post(path, body, format="json"), 400)
        assert (error["code"], error["message"]) == ("invalid_body", "The request body must be a JSON object.")


@pytest.mark.parametrize("stream", ["yes", 1, "true", None])
def test_it_answers_400_for_a_stream_flag_that_is_not_a_boolean(api_client, stream):
    body = {"model": "tiny-llama", "messages": MESSAGES, "stream": stream}
    error = error_of(api_client.post(CHAT, body, format="json"), 400)
    assert (error["code"], error["param"]) == ("invalid_type", "stream")


@pytest.mark.parametrize("parameter", sorted(DENIED_PARAMETERS))
def test_it_refuses_vllm_parameters_that_reach_past_one_answer(api_client, parameter):
    body = {"model": "tiny-llama", "messages": MESSAGES, parameter: "{{ x }}"}
    error = error_of(api_client.post(CHAT, body, format="json"), 400)
    assert (error["code"], error["param"]) == ("unsupported_parameter", parameter)
    assert error["message"] == f"Parameter {parameter!r} is not accepted by this gateway."


def test_it_lists_the_denied_parameters():
    assert {"chat_template", "lora_request", "priority"} <= DENIED_PARAMETERS


def test_it_needs_an_api_key(db):
    client = APIClient()
    for path, body in ((CHAT, {"model": "tiny-llama", "messages": MESSAGES}), ("/generate", {"prompt": "hi"})):
        error = error_of(client.post(path, body, format="json"), 401)
        assert error["type"] == "authentication_error"


@pytest.mark.parametrize("body", [{}, {"prompt": ""}, {"prompt": 5}, {"max_tokens": 3}])
def test_it_answers_400_for_generate_without_a_prompt(api_client, body):
    error = error_of(api_client.post("/generate", body, format="json"), 400)
    assert (error["code"], error["param"]) == ("invalid_prompt", "prompt")


def test_it_answers_400_for_a_generate_parameter_it_does_not_take(api_client):
    error = error_of(api_client.post("/generate", {"prompt": "hi", "n": 3, "best_of": 2}, format="json"), 400)
    assert (error["code"], error["param"]) == ("unsupported_parameter", "best_of")


# --- sticky keys -----------------------------------------------------------------------------


class _Key:
    pk = "key_0123"


def _request(auth=None, **headers):
    request = RequestFactory().post(CHAT, headers=headers)
    request.auth = auth
    return request


def test_it_takes_each_sticky_key_from_its_place_in_the_request():
    request = _request(auth=_Key(), **{"X-Route-Key": "tenant-9"})
    assert sticky_keys(request, {"user": "user-7"}) == {
        "user": "user-7",
        "header": "tenant-9",
        "api_key": "key_0123",
        "none": None,
    }


@pytest.mark.parametrize("user", [None, "", 7, ["user-7"]])
def test_it_has_no_key_where_the_request_carries_none(user):
    body = {} if user is None else {"user": user}
    assert sticky_keys(_request(), body) == {"user": None, "header": None, "api_key": None, "none": None}


def test_it_reads_the_route_key_header_case_insensitively():
    assert sticky_keys(_request(**{"x-route-key": "t1"}), {})["header"] == "t1"


def test_a_client_that_accepts_only_an_event_stream_gets_an_answer_not_a_406(api_client, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": (f"tiny-llama:{free_port()}",)}
    response = api_client.post(
        "/v1/chat/completions",
        {"model": "no-such-model", "messages": [], "stream": True},
        format="json",
        HTTP_ACCEPT="text/event-stream",
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
