"""``inference.resolve``: what a request's ``model`` names for its caller, and the weighted split."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from inference.models import Route, RouteSplit
from inference.resolve import callable_model_names, pick_split, resolve_target
from registry.models import ModelVersion
from registry.services.aliases import model_promote

# The registry suite's version fixtures (the F811 noqas below: pytest injects them by name).
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401
from tuninglab.errors import InvalidRequestError, NotFoundError

pytestmark = pytest.mark.django_db
FT_ID = "ft:tiny-llama:alice:bot:ftjob-0123456789abcdef"


@pytest.fixture(autouse=True)
def _served(settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("tiny-llama:8199",)}


@pytest.fixture
def three(tiny_adapter_version):  # noqa: F811
    """v1, v2, v3 of alice's "bot" on tiny-llama; v1 carries an ``ft:`` id."""
    return [tiny_adapter_version(fine_tuned_model=FT_ID), tiny_adapter_version(), tiny_adapter_version()]


def make_route(versions, weights, *, sticky: str = Route.Sticky.USER) -> Route:
    route = Route.objects.create(registered_model=versions[0].registered_model, sticky=sticky)
    RouteSplit.objects.bulk_create(
        [RouteSplit(route=route, version=v, weight=w) for v, w in zip(versions, weights, strict=True)]
    )
    return Route.objects.prefetch_related("splits__version").get(pk=route.pk)


def _not_found(owner, model) -> NotFoundError:
    with pytest.raises(NotFoundError) as info:
        resolve_target(owner=owner, model=model)
    assert (info.value.code, info.value.param, info.value.status) == ("model_not_found", "model", 404)
    return info.value


def _invalid(owner, model, code: str) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        resolve_target(owner=owner, model=model)
    assert (info.value.code, info.value.param, info.value.status) == (code, "model", 400)
    return info.value


# --- the rules ------------------------------------------------------------------------------


def test_it_resolves_an_ft_id_to_the_version_its_job_produced(three, user):
    target = resolve_target(owner=user, model=FT_ID)
    assert target.version == three[0] and target.route is None
    assert (target.requested, target.base.name, target.base.url) == (FT_ID, "tiny-llama", "http://127.0.0.1:8199")
    assert target.vllm_model == three[0].id and target.vllm_model.startswith("mv-")


def test_it_resolves_a_base_models_name_to_the_bare_base(three, user):
    target = resolve_target(owner=user, model="tiny-llama")
    assert target.version is None and target.route is None
    assert (target.vllm_model, target.base.port) == ("tiny-llama", 8199)


def test_it_resolves_a_pinned_version_number(three, user):
    model_promote(owner=user, name="bot", version=1)
    target = resolve_target(owner=user, model="bot@v2")
    assert (target.version, target.requested, target.vllm_model) == (three[1], "bot@v2", three[1].id)


def test_it_resolves_an_alias_to_the_version_it_holds(three, user):
    model_promote(owner=user, name="bot", version=3)
    model_promote(owner=user, name="bot", version=2, alias="canary")
    assert resolve_target(owner=user, model="bot@production").version == three[2]
    assert resolve_target(owner=user, model="bot@canary").version == three[1]


def test_it_resolves_a_bare_name_to_the_latest_version_without_alias_or_route(three, user):
    assert resolve_target(owner=user, model="bot").version == three[2]


def test_it_resolves_a_bare_name_to_production_over_the_latest_version(three, user):
    model_promote(owner=user, name="bot", version=1)
    model_promote(owner=user, name="bot", version=2, alias="canary")
    target = resolve_target(owner=user, model="bot")
    assert target.version == three[0] and target.route is None


def test_it_resolves_a_bare_name_through_its_route_over_production(three, user):
    model_promote(owner=user, name="bot", version=1)
    route = make_route(three, [0, 100, 0])
    for key in ("a", "b", None):
        target = resolve_target(owner=user, model="bot", sticky_keys={"user": key})
        assert target.version == three[1]
        assert target.route is not None and target.route.pk == route.pk


def test_it_sends_one_sticky_key_to_the_version_pick_split_gives_it(three, user):
    route = make_route(three[:2], [50, 50])
    seen = set()
    for i in range(40):
        key = f"user-{i}"
        expected = pick_split(route, key)
        chosen = {resolve_target(owner=user, model="bot", sticky_keys={"user": key}).version for _ in range(5)}
        assert chosen == {expected}
        seen.add(expected)
    assert seen == set(three[:2])  # 40 keys on a 50/50 split reach both


def test_it_uses_the_key_of_the_routes_sticky_kind(three, user):
    make_route(three[:2], [50, 50], sticky=Route.Sticky.HEADER)
    # The "user" key is the same on every call; only the header key decides.
    versions = {
        resolve_target(owner=user, model="bot", sticky_keys={"user": "same", "header": f"h-{i}"}).version
        for i in range(40)
    }
    assert versions == set(three[:2])


def test_it_draws_anew_for_every_request_when_the_route_is_not_sticky(three, user):
    make_route(three[:2], [50, 50], sticky=Route.Sticky.NONE)
    keys = {"user": "same", "header": "same", "api_key": "same", "none": None}
    versions = Counter(resolve_target(owner=user, model="bot", sticky_keys=keys).version.version for _ in range(200))
    assert set(versions) == {1, 2}


def test_it_ignores_a_route_whose_weights_are_all_zero(three, user):
    model_promote(owner=user, name="bot", version=2)
    make_route(three, [0, 0, 0])
    target = resolve_target(owner=user, model="bot")
    assert target.version == three[1] and target.route is None


# --- not found, not served, invalid -------------------------------------------------------------


def test_it_answers_not_found_for_another_owners_model_listing_the_callers_names(
    three,
    user,
    other_user,
    tiny_adapter_version,  # noqa: F811
):
    model_promote(owner=user, name="bot", version=1)
    tiny_adapter_version(owner=other_user, model_name="helper")
    model_promote(owner=other_user, name="helper", version=1)
    for model in ("bot", "bot@v1", "bot@production", FT_ID):
        error = _not_found(other_user, model)
        assert error.message == f"The model {model!r} does not exist or you do not have access to it."
        assert error.suggestion == "Use one of: tiny-llama, helper, helper@production"
    assert callable_model_names(user) == ["tiny-llama", "bot", "bot@production"]


@pytest.mark.parametrize("model", ["nope", "bot@v9", "bot@v0", "bot@staging", "bot@", "bot@v1@v2", "ft:nope"])
def test_it_answers_not_found_for_names_that_hold_nothing(three, user, model):
    error = _not_found(user, model)
    assert error.suggestion == "Use one of: tiny-llama, bot"


def test_it_suggests_registering_when_the_caller_can_call_nothing(db, other_user, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("",)}
    assert _not_found(other_user, "bot").suggestion == "Register and promote a model first."


def test_it_neither_lists_nor_resolves_a_served_base_that_is_not_registered(three, user, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("tiny-llama:8199", "unregistered:8200")}
    assert callable_model_names(user) == ["tiny-llama", "bot"]
    assert _not_found(user, "unregistered").suggestion == "Use one of: tiny-llama, bot"


def test_it_answers_not_served_for_a_version_on_a_base_this_deployment_does_not_serve(three, user, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("other-base:8300",)}
    for model in ("bot", "bot@v1", FT_ID, "tiny-llama"):
        error = _invalid(user, model, "model_not_served")
        assert error.message == (
            f"The model {model!r} runs on base model 'tiny-llama', which this deployment does not serve."
        )
        assert "TUNINGLAB_INFERENCE_BASE_MODELS" in error.suggestion


def test_it_answers_not_served_for_a_full_weights_version(three, user):
    ModelVersion.objects.filter(pk=three[1].pk).update(kind=ModelVersion.Kind.FULL)
    error = _invalid(user, "bot@v2", "model_not_served")
    assert "full-weights version" in error.message
    assert resolve_target(owner=user, model="bot@v1").version == three[0]  # the others still resolve


@pytest.mark.parametrize("model", [None, 7, 1.5, True, ["bot"], {"name": "bot"}, "", "b" * 257])
def test_it_refuses_a_model_that_is_not_a_name(db, user, model):
    error = _invalid(user, model, "invalid_model")
    assert error.message == "'model' must be a model name (string)."


# --- pick_split ----------------------------------------------------------------------------------


def _band(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def test_it_sends_one_key_to_one_version_every_time(three):
    route = make_route(three[:2], [90, 10])
    first = {f"k{i}": pick_split(route, f"k{i}") for i in range(300)}
    reloaded = Route.objects.prefetch_related("splits__version").get(pk=route.pk)
    assert all(pick_split(reloaded, key) == version for key, version in first.items())
    assert all(pick_split(route, key) == version for key, version in first.items())
    assert set(first.values()) == set(three[:2])


def test_it_splits_random_draws_90_10_within_four_sigma(three):
    route = make_route(three[:2], [90, 10])
    random.seed(20240601)
    counts = Counter(pick_split(route, None).version for _ in range(10_000))
    low, high = _band(10_000, 0.1)  # 1000 ± 120
    assert low <= counts[2] <= high, counts
    assert counts[1] + counts[2] == 10_000


def test_it_splits_distinct_sticky_keys_90_10_within_four_sigma(three):
    route = make_route(three[:2], [90, 10])
    counts = Counter(pick_split(route, f"user-{i}").version for i in range(10_000))
    low, high = _band(10_000, 0.1)
    assert low <= counts[2] <= high, counts


def test_it_never_picks_a_version_with_weight_zero(three):
    route = make_route(three, [1, 0, 1])
    random.seed(7)
    drawn = Counter(pick_split(route, None).version for _ in range(10_000))
    keyed = Counter(pick_split(route, f"k{i}").version for i in range(10_000))
    for counts in (drawn, keyed):
        assert counts[2] == 0
        low, high = _band(10_000, 0.5)
        assert low <= counts[1] <= high and counts[1] + counts[3] == 10_000, counts


def test_it_weights_three_versions_in_proportion(three):
    route = make_route(three, [60, 30, 10])
    counts = Counter(pick_split(route, f"user-{i}").version for i in range(10_000))
    for number, share in ((1, 0.6), (2, 0.3), (3, 0.1)):
        low, high = _band(10_000, share)
        assert low <= counts[number] <= high, counts
