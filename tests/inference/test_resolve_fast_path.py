"""The gateway's fast path for a promoted model (``inference.resolve._aliased_version``: the
version and its base's serving status in one query), measured by ``benchmarks/serving.py``.

It must decide exactly like the general path: an alias move is seen by the next request,
another owner's model stays invisible, a route and a base model's name still win, a not-ready
vLLM still answers 503, and the counters are still written with the relaxed commit.
"""

from __future__ import annotations

import pytest

from inference.gateway import _record
from inference.models import Route, RouteSplit, ServingProcess
from inference.resolve import resolve_target
from registry.models import VersionTraffic
from registry.services.aliases import model_promote

# The registry suite's version fixtures (the F811 noqas: pytest injects them by name).
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401
from tuninglab.errors import NotFoundError

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture
def served(settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("tiny-llama:8199",)}


@pytest.mark.django_db
def test_a_promoted_model_resolves_in_one_query_and_follows_an_alias_move_at_once(
    served,
    user,
    tiny_adapter_version,  # noqa: F811
    django_assert_num_queries,
):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    model_promote(owner=user, name="bot", version=1)
    ServingProcess.objects.create(base_name="tiny-llama", status="ready")
    with django_assert_num_queries(1):
        target = resolve_target(owner=user, model="bot")
    assert (target.version, target.serving_status, target.serving_status_read) == (v1, "ready", True)
    assert target.version.registered_model.name == "bot"  # joined: the metrics labels cost no query

    model_promote(owner=user, name="bot", version=2)
    assert resolve_target(owner=user, model="bot").version == v2  # the next request, no cache
    with django_assert_num_queries(1):
        assert resolve_target(owner=user, model="bot@production").version == v2


@pytest.mark.django_db
def test_the_fast_path_keeps_another_owners_model_invisible(
    served,
    user,
    other_user,
    tiny_base,  # noqa: F811
    tiny_adapter_version,  # noqa: F811
):
    tiny_adapter_version()
    model_promote(owner=user, name="bot")
    for name in ("bot", "bot@production"):
        with pytest.raises(NotFoundError):
            resolve_target(owner=other_user, model=name)
    theirs = tiny_adapter_version(owner=other_user)
    model_promote(owner=other_user, name="bot")
    assert resolve_target(owner=other_user, model="bot").version == theirs


@pytest.mark.django_db
def test_a_route_and_a_base_models_name_still_win_over_the_production_alias(
    served,
    user,
    tiny_adapter_version,  # noqa: F811
):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    model_promote(owner=user, name="bot", version=1)
    route = Route.objects.create(registered_model=v1.registered_model, sticky=Route.Sticky.NONE)
    RouteSplit.objects.create(route=route, version=v2, weight=100)
    target = resolve_target(owner=user, model="bot")
    assert (target.version, target.route, target.serving_status_read) == (v2, route, False)

    named_like_the_base = tiny_adapter_version(model_name="tiny-llama")
    model_promote(owner=user, name="tiny-llama")
    assert resolve_target(owner=user, model="tiny-llama").version is None  # the base itself
    assert resolve_target(owner=user, model="tiny-llama@production").version == named_like_the_base


@pytest.mark.django_db
def test_the_gateway_answers_503_for_a_promoted_model_while_vllm_is_not_ready(
    served,
    user,
    api_client,
    tiny_adapter_version,  # noqa: F811
):
    tiny_adapter_version()
    model_promote(owner=user, name="bot")
    ServingProcess.objects.create(base_name="tiny-llama", status="restarting")
    response = api_client.post(CHAT, {"model": "bot", "messages": MESSAGES}, format="json")
    assert response.status_code == 503, response.content
    assert "vLLM is restarting" in response.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_the_traffic_counters_are_still_written_with_the_relaxed_commit(
    served,
    user,
    tiny_adapter_version,  # noqa: F811
):
    version = tiny_adapter_version()
    model_promote(owner=user, name="bot")
    target = resolve_target(owner=user, model="bot")
    for _ in range(3):
        _record(target, 0.0, owner=user, usage={"prompt_tokens": 5, "completion_tokens": 7})
    row = VersionTraffic.objects.get(version=version)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 15, 21)
