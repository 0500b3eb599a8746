"""``/v1/models/{name}/route`` (A/B split, sticky, shadow), ``/traffic``, ``/shadow_records``, ``/v1/serving``."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from inference.models import Route, RouteSplit, ServingProcess, ShadowRecord
from registry.services.traffic import traffic_record

# The registry suite's version fixtures (the F811 noqas below: pytest injects them by name).
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401

pytestmark = pytest.mark.django_db
URL = "/v1/models/bot/route"


@pytest.fixture(autouse=True)
def _served(settings):
    settings.TUNINGLAB = {
        **settings.TUNINGLAB,
        "INFERENCE_BASE_MODELS": ("tiny-llama:8199",),
        "SERVING_MAX_LORA_RANK": 16,
    }


@pytest.fixture
def three(tiny_adapter_version):  # noqa: F811
    return [tiny_adapter_version() for _ in range(3)]


def put(client, body, name: str = "bot"):
    return client.put(f"/v1/models/{name}/route", body, format="json")


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def route_state() -> list:
    """Everything a refused PUT must leave alone."""
    routes = list(Route.objects.values_list("registered_model__name", "sticky", "shadow_version", "shadow_percent"))
    splits = list(RouteSplit.objects.order_by("id").values_list("version__version", "weight"))
    return [routes, splits]


# --- PUT / GET / DELETE ----------------------------------------------------------------------


def test_it_sets_reads_replaces_and_deletes_a_route(api_client, three, user):
    body = {
        "splits": [{"version": 2, "weight": 10}, {"version": 1, "weight": 90}],
        "sticky": "header",
        "shadow": {"version": 3, "percent": 25},
    }
    before = int(time.time())
    response = put(api_client, body)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert before - 1 <= answer.pop("updated_at") <= int(time.time()) + 1
    assert answer == {
        "object": "model.route",
        "model": "bot",
        "sticky": "header",
        "splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],  # in version order
        "shadow": {"version": 3, "percent": 25},
    }
    route = Route.objects.get()
    assert (route.updated_by, route.shadow_version, route.shadow_percent) == (user, three[2], 25)

    got = api_client.get(URL)
    assert got.status_code == 200
    assert {k: v for k, v in got.json().items() if k != "updated_at"} == answer

    replaced = put(api_client, {"splits": [{"version": 3, "weight": 1}]})
    assert replaced.status_code == 200, replaced.content
    assert replaced.json()["splits"] == [{"version": 3, "weight": 1}]
    assert (replaced.json()["sticky"], replaced.json()["shadow"]) == ("user", None)  # defaults
    assert Route.objects.count() == 1
    assert list(RouteSplit.objects.values_list("version__version", "weight")) == [(3, 1)]

    deleted = api_client.delete(URL)
    assert deleted.status_code == 204
    assert (Route.objects.count(), RouteSplit.objects.count()) == (0, 0)
    assert error_of(api_client.get(URL), 404)["code"] == "route_not_found"
    assert error_of(api_client.delete(URL), 404)["code"] == "route_not_found"


def test_it_answers_route_not_found_for_a_model_without_a_route(api_client, three):
    error = error_of(api_client.get(URL), 404)
    assert (error["code"], error["param"]) == ("route_not_found", "name")
    assert "production alias" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([{"version": 1, "weight": 1}], "route"),
        ("splits", "route"),
        ({"splits": [{"version": 1, "weight": 1}], "mirror": True}, "mirror"),
        ({}, "splits"),
        ({"splits": []}, "splits"),
        ({"splits": {"version": 1, "weight": 1}}, "splits"),
        ({"splits": [{"version": 1, "weight": 1}] * 11}, "splits"),
        ({"splits": [{"version": 1, "weight": 1}], "sticky": "cookie"}, "sticky"),
        ({"splits": [{"version": 1, "weight": 1}], "sticky": None}, "sticky"),
        ({"splits": [1]}, "splits[0]"),
        ({"splits": [{"version": 1}]}, "splits[0]"),
        ({"splits": [{"version": 1, "weight": 1, "extra": 0}]}, "splits[0]"),
        ({"splits": [{"version": "1", "weight": 1}]}, "splits[0].version"),
        ({"splits": [{"version": True, "weight": 1}]}, "splits[0].version"),
        ({"splits": [{"version": 0, "weight": 1}]}, "splits[0].version"),
        ({"splits": [{"version": 1, "weight": 1}, {"version": 2, "weight": -1}]}, "splits[1].weight"),
        ({"splits": [{"version": 1, "weight": 10_001}]}, "splits[0].weight"),
        ({"splits": [{"version": 1, "weight": 1.5}]}, "splits[0].weight"),
        ({"splits": [{"version": 1, "weight": 1}, {"version": 1, "weight": 2}]}, "splits[1].version"),
        ({"splits": [{"version": 1, "weight": 0}, {"version": 2, "weight": 0}]}, "splits"),
        ({"splits": [{"version": 1, "weight": 1}], "shadow": 3}, "shadow"),
        ({"splits": [{"version": 1, "weight": 1}], "shadow": {"version": 3}}, "shadow"),
        ({"splits": [{"version": 1, "weight": 1}], "shadow": {"version": 3, "percent": 101}}, "shadow.percent"),
        ({"splits": [{"version": 1, "weight": 1}], "shadow": {"version": "3", "percent": 5}}, "shadow.version"),
    ],
)
def test_it_refuses_an_invalid_route_naming_the_field(api_client, three, body, param):
    put(api_client, {"splits": [{"version": 1, "weight": 1}]})
    before = route_state()
    error = error_of(put(api_client, body), 400)
    assert (error["code"], error["param"], error["type"]) == ("invalid_route", param, "invalid_request_error")
    assert route_state() == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"splits": [{"version": 1, "weight": 1}, {"version": 9, "weight": 1}]}, "splits[1].version"),
        ({"splits": [{"version": 1, "weight": 1}], "shadow": {"version": 9, "percent": 5}}, "shadow.version"),
    ],
)
def test_it_answers_not_found_for_an_unknown_version(api_client, three, body, param):
    error = error_of(put(api_client, body), 404)
    assert (error["code"], error["param"]) == ("version_not_found", param)
    assert Route.objects.count() == 0


def test_it_answers_not_found_for_another_owners_model(api_client, other_api_client, three):
    assert put(api_client, {"splits": [{"version": 1, "weight": 1}]}).status_code == 200
    before = route_state()
    for response in (
        put(other_api_client, {"splits": [{"version": 2, "weight": 1}]}),
        other_api_client.get(URL),
        other_api_client.delete(URL),
        other_api_client.get("/v1/models/bot/traffic"),
        other_api_client.get("/v1/models/bot/shadow_records"),
    ):
        error = error_of(response, 404)
        assert (error["code"], error["param"]) == ("model_not_found", "name")
    assert route_state() == before


def test_it_refuses_a_version_that_fails_the_serving_check_and_changes_nothing(api_client, three, tiny_adapter_version):  # noqa: F811
    assert put(api_client, {"splits": [{"version": 1, "weight": 100}]}).status_code == 200
    tiny_adapter_version(rank=32)  # v4: above SERVING_MAX_LORA_RANK = 16
    before = route_state()
    for body, param in (
        ({"splits": [{"version": 1, "weight": 50}, {"version": 4, "weight": 50}]}, "splits[1].version"),
        ({"splits": [{"version": 2, "weight": 1}], "shadow": {"version": 4, "percent": 10}}, "shadow.version"),
    ):
        error = error_of(put(api_client, body), 409)
        assert (error["code"], error["param"]) == ("version_not_servable", param)
        assert [d["code"] for d in error["details"]] == ["rank_too_large"]
        assert "bot v4 fails the pre-promotion check" in error["message"]
        assert route_state() == before


def test_it_accepts_an_unservable_version_at_weight_zero(api_client, three, tiny_adapter_version):  # noqa: F811
    tiny_adapter_version(rank=32)  # v4: gets no traffic, so it is not checked
    response = put(api_client, {"splits": [{"version": 1, "weight": 1}, {"version": 4, "weight": 0}]})
    assert response.status_code == 200, response.content
    assert response.json()["splits"] == [{"version": 1, "weight": 1}, {"version": 4, "weight": 0}]


def test_it_needs_an_api_key(db, three):
    client = APIClient()
    for response in (client.get(URL), put(client, {"splits": []}), client.get("/v1/serving")):
        assert error_of(response, 401)["type"] == "authentication_error"


# --- traffic ---------------------------------------------------------------------------------


def test_it_reports_live_traffic_per_version(api_client, three):
    v1, v2, _ = three
    traffic_record(version_id=v1.id, latency_ms=100.0, prompt_tokens=10, completion_tokens=4)
    traffic_record(version_id=v1.id, latency_ms=300.5, prompt_tokens=20, completion_tokens=6, error=True)
    traffic_record(version_id=v1.id, latency_ms=999.0, completion_tokens=50, shadow=True)
    traffic_record(version_id=v2.id, latency_ms=40.0, completion_tokens=7, shadow=True, error=True)

    response = api_client.get("/v1/models/bot/traffic")

    assert response.status_code == 200
    body = response.json()
    assert (body["object"], body["model"]) == ("list", "bot")
    rows = body["data"]
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert all(isinstance(r.pop("last_request_at"), int) for r in rows[:2]) and rows[2].pop("last_request_at") is None
    assert rows[0] == {
        "version": 1,
        "requests": 2,
        "errors": 1,
        "error_rate": 0.5,
        "prompt_tokens": 30,
        "completion_tokens": 10,
        "mean_latency_ms": 200.25,
        "max_latency_ms": 300.5,
        "shadow_requests": 1,
        "shadow_errors": 0,
    }
    assert rows[1] == {
        "version": 2,
        "requests": 0,
        "errors": 0,
        "error_rate": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "mean_latency_ms": None,
        "max_latency_ms": 0.0,
        "shadow_requests": 1,
        "shadow_errors": 1,
    }
    assert rows[2]["requests"] == 0 and rows[2]["shadow_requests"] == 0


# --- shadow records --------------------------------------------------------------------------


def test_it_lists_only_the_callers_shadow_records_newest_first(
    api_client,
    other_api_client,
    user,
    other_user,
    three,
    tiny_adapter_version,  # noqa: F811
):
    v1, v2, v3 = three
    theirs = tiny_adapter_version(owner=other_user)  # mallory's own "bot" v1
    old = ShadowRecord.objects.create(
        owner=user,
        registered_model=v1.registered_model,
        primary_version=v1,
        shadow_version=v3,
        endpoint="chat",
        request={"messages": [{"role": "user", "content": "hi"}]},
        primary_output="hello",
        shadow_output="hey",
        shadow_latency_ms=12.5,
    )
    new = ShadowRecord.objects.create(
        owner=user,
        registered_model=v1.registered_model,
        primary_version=None,
        shadow_version=v2,
        endpoint="completions",
        request={"prompt": "2+2="},
        error="vLLM is not running",
    )
    ShadowRecord.objects.create(
        owner=other_user,
        registered_model=theirs.registered_model,
        primary_version=theirs,
        shadow_version=theirs,
        endpoint="chat",
        request={"prompt": "secret"},
        shadow_output="mallory's",
    )

    response = api_client.get("/v1/models/bot/shadow_records")

    assert response.status_code == 200
    data = response.json()["data"]
    assert [r["id"] for r in data] == [new.id, old.id]
    assert data[1] == {
        "id": old.id,
        "object": "shadow_record",
        "endpoint": "chat",
        "primary_version": 1,
        "shadow_version": 3,
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "primary_output": "hello",
        "shadow_output": "hey",
        "shadow_latency_ms": 12.5,
        "error": None,
        "created_at": int(old.created_at.timestamp()),
    }
    assert (data[0]["primary_version"], data[0]["error"], data[0]["shadow_latency_ms"]) == (
        None,
        "vLLM is not running",
        None,
    )
    limited = api_client.get("/v1/models/bot/shadow_records?limit=1").json()["data"]
    assert [r["id"] for r in limited] == [new.id]
    mallory = other_api_client.get("/v1/models/bot/shadow_records").json()["data"]
    assert [r["shadow_output"] for r in mallory] == ["mallory's"]


# --- serving status --------------------------------------------------------------------------


def test_it_reports_each_served_base_and_whether_it_is_ready(api_client, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("tiny-llama:8199", "other-base:8200")}
    ready_at = timezone.now()
    ServingProcess.objects.create(base_name="tiny-llama", status="ready", ready_at=ready_at, restarts=2)
    ServingProcess.objects.create(base_name="retired-base", status="ready", ready_at=ready_at)

    response = api_client.get("/v1/serving")

    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {
                "base_model": "tiny-llama",
                "status": "ready",
                "ready": True,
                "ready_since": int(ready_at.timestamp()),
                "restarts": 2,
            },
            {"base_model": "other-base", "status": "stopped", "ready": False, "ready_since": None, "restarts": 0},
        ],
    }
    ServingProcess.objects.filter(base_name="tiny-llama").update(status="restarting", restarts=3)
    first = api_client.get("/v1/serving").json()["data"][0]
    assert (first["status"], first["ready"], first["restarts"]) == ("restarting", False, 3)
