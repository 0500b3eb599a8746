"""Aliases: promote and rollback move them with a recorded event, walk back through history, and
refuse (changing nothing) what the pre-promotion check refuses."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from django.db import connections

from registry.models import Alias, AliasEvent
from registry.services import aliases as aliases_module
from registry.services.aliases import alias_name_validate, model_promote, model_rollback
from registry.services.base_models import base_model_register
from registry.services.checks import VersionNotServableError
from tests.helpers import require_postgres
from tuninglab import dispatch
from tuninglab.errors import ConflictError, InvalidRequestError, NotFoundError
from tuninglab.task_names import SYNC_REGISTRY

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(tiny_adapter_version):
    """v1, v2, v3 of alice's "bot" on tiny-llama, all servable."""
    return [tiny_adapter_version() for _ in range(3)]


@pytest.fixture
def sent_tasks(monkeypatch, settings):
    """Task names sent to workers; MLflow on, so each alias move asks for a registry sync."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_ENABLED": True}
    sent: list[str] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, args, queue: sent.append(name))
    return sent


def production(user) -> Alias:
    return Alias.objects.select_related("version").get(registered_model__owner=user, alias="production")


def history(user) -> list[tuple[str, int | None, int]]:
    """(kind, from, to) of the production alias, oldest first."""
    events = AliasEvent.objects.filter(alias__registered_model__owner=user, alias__alias="production").order_by("id")
    return [
        (e.kind, e.from_version.version if e.from_version else None, e.to_version.version)
        for e in events.select_related("from_version", "to_version")
    ]


def test_it_promotes_and_records_who_when_from_to_and_why(
    versions, user, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = model_promote(owner=user, name="bot", version=1, actor=user, reason="first release")
    with django_capture_on_commit_callbacks(execute=True):
        move = model_promote(owner=user, name="bot", version=2, actor=user, reason="better eval")
    assert production(user).version.version == 2
    event = move.event
    assert (event.kind, event.from_version.version, event.to_version.version) == ("promote", 1, 2)
    assert (event.actor, event.reason) == (user, "better eval")
    assert event.created_at >= first.event.created_at and first.event.from_version is None
    assert move.alias.pk == first.alias.pk and move.alias.mlflow_synced_at is None
    assert sent_tasks == [SYNC_REGISTRY, SYNC_REGISTRY]  # one sync request per move, after commit


def test_it_promotes_the_newest_version_when_none_is_given(versions, user):
    move = model_promote(owner=user, name="bot")
    assert move.event.to_version.version == 3 == production(user).version.version


def test_it_is_idempotent_when_the_alias_already_holds_the_version(versions, user):
    model_promote(owner=user, name="bot", version=2)
    again = model_promote(owner=user, name="bot", version=2, reason="again")
    assert again.event is None and again.alias.version.version == 2
    assert history(user) == [("promote", None, 2)]


def test_it_rolls_back_twice_walking_further_back_then_fails_clearly(versions, user):
    for number in (1, 2, 3):
        model_promote(owner=user, name="bot", version=number)
    first = model_rollback(owner=user, name="bot", actor=user, reason="v3 broke production")
    assert (first.event.kind, first.event.from_version.version, first.event.to_version.version) == ("rollback", 3, 2)
    assert first.event.reason == "v3 broke production" and first.event.actor == user
    second = model_rollback(owner=user, name="bot")
    assert (second.event.from_version.version, second.event.to_version.version) == (3 - 1, 1)
    with pytest.raises(ConflictError) as info:
        model_rollback(owner=user, name="bot")
    assert info.value.code == "nothing_to_roll_back"
    assert info.value.message == "Nothing to roll back: bot@production is at v1 and held no earlier version."
    assert production(user).version.version == 1
    assert history(user) == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
        ("rollback", 3, 2),
        ("rollback", 2, 1),
    ]


def test_it_rolls_back_to_the_version_held_before_even_after_a_re_promotion(versions, user):
    # v1 -> v2 -> v1 (promoted again) : "before" is v2, the version that held the alias last.
    for number in (1, 2, 1):
        model_promote(owner=user, name="bot", version=number)
    assert model_rollback(owner=user, name="bot").event.to_version.version == 2
    assert model_rollback(owner=user, name="bot").event.to_version.version == 1
    with pytest.raises(ConflictError, match="Nothing to roll back"):
        model_rollback(owner=user, name="bot")


def test_it_rolls_back_to_an_explicit_version_and_continues_from_there(versions, user, tiny_adapter_version):
    tiny_adapter_version()  # v4
    for number in (1, 2, 3, 4):
        model_promote(owner=user, name="bot", version=number)
    move = model_rollback(owner=user, name="bot", to_version=2, reason="skip v3")
    assert (move.event.from_version.version, move.event.to_version.version) == (4, 2)
    # The stack unwound to v2, so the next default rollback goes to what held it before v2.
    assert model_rollback(owner=user, name="bot").event.to_version.version == 1
    assert model_rollback(owner=user, name="bot", to_version=1).event is None  # already there


def test_it_refuses_a_rollback_target_that_is_not_a_version_of_the_model(versions, user):
    model_promote(owner=user, name="bot", version=1)
    with pytest.raises(NotFoundError) as info:
        model_rollback(owner=user, name="bot", to_version=9)
    assert (info.value.code, info.value.param) == ("version_not_found", "to_version")


def test_it_keeps_aliases_of_one_model_apart(versions, user):
    model_promote(owner=user, name="bot", version=1)
    model_promote(owner=user, name="bot", version=2)
    model_promote(owner=user, name="bot", version=3, alias="staging")
    assert model_rollback(owner=user, name="bot").event.to_version.version == 1
    with pytest.raises(ConflictError, match=r"bot@staging is at v3"):
        model_rollback(owner=user, name="bot", alias="staging")
    assert Alias.objects.get(alias="staging").version.version == 3


def test_it_answers_not_found_for_another_owners_model(versions, user, other_user):
    model_promote(owner=user, name="bot", version=1)
    for call in (
        lambda: model_promote(owner=other_user, name="bot", version=2),
        lambda: model_rollback(owner=other_user, name="bot"),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert (info.value.code, info.value.status) == ("model_not_found", 404)
    assert production(user).version.version == 1 and AliasEvent.objects.count() == 1


def test_it_answers_not_found_for_a_missing_alias_or_version(versions, user):
    with pytest.raises(NotFoundError, match="has no alias 'production'"):
        model_rollback(owner=user, name="bot")
    with pytest.raises(NotFoundError) as info:
        model_promote(owner=user, name="bot", version=7)
    assert info.value.code == "version_not_found"


@pytest.mark.parametrize("alias", ["Production", "-prod", "prod.eu", "latest", "v3", "a" * 65, "", "prod/x"])
def test_it_refuses_invalid_alias_names(alias):
    with pytest.raises(InvalidRequestError) as info:
        alias_name_validate(alias)
    assert info.value.code == "invalid_alias"


@pytest.mark.parametrize("alias", ["production", "staging", "canary-eu", "exp_2", "v3-candidate", "0" * 64])
def test_it_accepts_user_defined_alias_names(alias):
    alias_name_validate(alias)


def _refused_promotion(user, *, version: int, code: str, capture) -> None:
    before = list(AliasEvent.objects.values_list("id", flat=True))
    with capture(execute=True) as callbacks, pytest.raises(VersionNotServableError) as info:
        model_promote(owner=user, name="bot", version=version, actor=user, reason="try")
    assert code in [d["code"] for d in info.value.details]
    assert f"[{code}]" in info.value.message
    assert production(user).version.version == 1  # unchanged
    assert list(AliasEvent.objects.values_list("id", flat=True)) == before  # no event
    assert callbacks == []  # nothing queued for after commit: no registry sync for a move that did not happen


def test_it_refuses_to_promote_a_rank_64_adapter_over_a_limit_of_16(
    tiny_adapter_version, user, settings, django_capture_on_commit_callbacks
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16}
    tiny_adapter_version(rank=8)
    tiny_adapter_version(rank=64)
    model_promote(owner=user, name="bot", version=1)
    _refused_promotion(user, version=2, code="rank_too_large", capture=django_capture_on_commit_callbacks)


def test_it_refuses_to_promote_an_adapter_trained_on_another_base(
    tiny_adapter_version,
    tiny_model_dir,
    peft_adapter,
    make_version,
    user,
    settings,
    tmp_path,
    django_capture_on_commit_callbacks,
):
    tiny_adapter_version()
    other_dir = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other_dir)
    weights = other_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # other weights, same shapes: only the content hash tells
    weights.write_bytes(bytes(data))
    other = base_model_register(name="tiny-other", path=other_dir)
    make_version(base=other, adapter_dir=peft_adapter(other_dir))  # v2
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_BASE_MODEL": "tiny-llama"}
    model_promote(owner=user, name="bot", version=1)
    _refused_promotion(user, version=2, code="base_mismatch", capture=django_capture_on_commit_callbacks)


def test_it_refuses_to_promote_a_truncated_safetensors_file(
    tiny_adapter_version, user, django_capture_on_commit_callbacks
):
    tiny_adapter_version()
    broken = tiny_adapter_version()
    weights = Path(broken.adapter_path) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-512])
    model_promote(owner=user, name="bot", version=1)
    _refused_promotion(user, version=2, code="truncated_file", capture=django_capture_on_commit_callbacks)


def test_it_checks_the_rollback_target_too(tiny_adapter_version, user, settings):
    tiny_adapter_version(rank=16)
    tiny_adapter_version(rank=8)
    model_promote(owner=user, name="bot", version=1)
    model_promote(owner=user, name="bot", version=2)
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 8}  # serving shrank since v1
    with pytest.raises(VersionNotServableError) as info:
        model_rollback(owner=user, name="bot")
    assert [d["code"] for d in info.value.details] == ["rank_too_large"]
    assert production(user).version.version == 2
    assert history(user) == [("promote", None, 1), ("promote", 1, 2)]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_serialises_two_concurrent_promotions_of_one_alias(tiny_adapter_version, user, monkeypatch):
    require_postgres()
    for _ in range(3):
        tiny_adapter_version()
    model_promote(owner=user, name="bot", version=1)
    # Widen the window between reading the alias and writing it: without the row lock both
    # promotions would read v1 and both events would say "from v1".
    real_check = aliases_module.version_require_servable

    def slow_check(*, version):
        real_check(version=version)
        time.sleep(0.5)

    monkeypatch.setattr(aliases_module, "version_require_servable", slow_check)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def promote(number: int) -> None:
        try:
            barrier.wait()
            model_promote(owner=user, name="bot", version=number, reason=f"thread {number}")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=promote, args=(n,)) for n in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    chain = history(user)
    assert len(chain) == 3 and chain[0] == ("promote", None, 1)
    (_, from_a, to_a), (_, from_b, to_b) = chain[1:]
    assert (from_a, from_b) == (1, to_a)  # the second saw the first one's result
    assert {to_a, to_b} == {2, 3} and production(user).version.version == to_b
