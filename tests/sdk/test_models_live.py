"""``client.models`` (sync and async) against the live server: list, versions, promote, rollback,
aliases and their history, evaluations and comparisons."""

from __future__ import annotations

import asyncio

import pytest
from tuninglab_sdk import (
    AliasMove,
    AsyncTuningLab,
    ConflictError,
    Evaluation,
    ModelVersion,
    NotFoundError,
    TuningLab,
)
from tuninglab_sdk.resources import models as sdk_models

from registry.models import Alias, AliasEvent, Comparison, RunStatus
from tests.registry.conftest import (  # noqa: F401 - fixtures
    make_version,
    peft_adapter,
    tiny_adapter_version,
    tiny_base,
    training_file,
)
from tuninglab import dispatch
from tuninglab.task_names import RUN_COMPARISON, RUN_EVALUATION

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(live_server, raw_key):
    with TuningLab(base_url=live_server.url, api_key=raw_key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, list]]:
    """Tasks the server sends by name, recorded (no worker runs an evaluation here)."""
    calls: list[tuple[str, list]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: calls.append((name, list(args))))
    return calls


def test_it_lists_promotes_and_rolls_back_through_the_sdk(client, tiny_adapter_version, user, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sdk_models, "PAGE_SIZE", 2)  # three versions: two pages, walked by versions()
    v1, _, _ = (tiny_adapter_version() for _ in range(3))
    v1.job.fine_tuned_model = f"ft:tiny-llama:alice::{v1.job_id}"
    v1.job.save(update_fields=["fine_tuned_model"])

    assert [(m.id, m.owned_by, m.type) for m in client.models.list()] == [
        ("tiny-llama", "system", "base_model"),
        ("bot", "alice", "registered_model"),
        (v1.job.fine_tuned_model, "alice", "fine_tuned_model"),
    ]
    versions = client.models.versions("bot")
    assert [v.version for v in versions] == [3, 2, 1] and all(isinstance(v, ModelVersion) for v in versions)
    assert versions[2].id == v1.id and versions[2].job_id == v1.job_id and versions[2].lineage["lora"]["rank"] == 8
    assert client.models.version("bot", 1).sha256 == v1.sha256
    assert client.models.retrieve(v1.job.fine_tuned_model).raw["model_version"]["id"] == v1.id

    first = client.models.promote("bot", version=1, reason="launch")
    assert isinstance(first, AliasMove)
    assert (first.alias, first.version, first.previous_version) == ("production", 1, None)
    assert (first.event.kind, first.event.actor, first.event.reason) == ("promote", "alice", "launch")
    assert client.models.promote("bot").version == 3  # the newest
    assert client.models.promote("bot", version=2).previous_version == 3
    assert (client.models.rollback("bot").version, client.models.rollback("bot").version) == (3, 1)
    with pytest.raises(ConflictError) as nothing:
        client.models.rollback("bot")
    assert nothing.value.code == "nothing_to_roll_back"

    assert [(a.alias, a.version) for a in client.models.aliases("bot")] == [("production", 1)]
    history = client.models.alias_history("bot", "production")
    assert [(e.kind, e.from_version, e.to_version) for e in history] == [
        ("rollback", 3, 1),
        ("rollback", 2, 3),
        ("promote", 3, 2),
        ("promote", 1, 3),
        ("promote", None, 1),
    ]
    assert set(AliasEvent.objects.values_list("actor_id", flat=True)) == {user.id}
    assert client.models.retrieve("bot").raw["aliases"] == {"production": 1}


def test_it_raises_the_serving_checks_reasons_and_not_found_through_the_sdk(
    client,
    tiny_adapter_version,  # noqa: F811
    settings,
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16}
    tiny_adapter_version(rank=32)

    with pytest.raises(ConflictError) as refused:
        client.models.promote("bot", version=1)
    with pytest.raises(NotFoundError) as missing:
        client.models.versions("nope")

    assert refused.value.code == "version_not_servable"
    assert "rank_too_large" in {d["code"] for d in refused.value.body["error"]["details"]}
    assert not Alias.objects.exists()
    assert missing.value.code == "model_not_found"


def test_it_evaluates_compares_and_moves_aliases_asynchronously(
    live_server,
    raw_key,
    tiny_adapter_version,  # noqa: F811
    training_file,  # noqa: F811
    sent,
):
    tiny_adapter_version()
    tiny_adapter_version()

    def client() -> AsyncTuningLab:
        return AsyncTuningLab(base_url=live_server.url, api_key=raw_key, max_retries=0)

    async def queue() -> tuple:
        async with client() as sdk:
            versions = await sdk.models.versions("bot")
            promoted = await sdk.models.promote("bot", version=1)
            moved = await sdk.models.promote("bot")
            back = await sdk.models.rollback("bot")
            history = await sdk.models.alias_history("bot")
            evaluation = await sdk.models.evaluate("bot", 2, file=training_file.id, max_examples=3)
            fetched = await sdk.models.evaluation(evaluation.id)
            comparison = await sdk.models.compare("bot", "base", 2, file=training_file.id)
            return versions, promoted, moved, back, history, evaluation, fetched, comparison

    async def finished(comparison_id: str) -> tuple:
        async with client() as sdk:
            return await sdk.models.comparison_report(comparison_id), await sdk.models.comparison(comparison_id)

    versions, promoted, moved, back, history, evaluation, fetched, comparison = asyncio.run(queue())
    # What a worker stores when the comparison finishes (the runner's tests cover computing it).
    Comparison.objects.filter(pk=comparison.id).update(
        status=RunStatus.SUCCEEDED, outcomes={"wins": 2, "ties": 0, "losses": 1}
    )
    report, done = asyncio.run(finished(comparison.id))

    assert [v.version for v in versions] == [2, 1]
    assert (promoted.version, moved.version, back.version) == (1, 2, 1)
    assert [e.kind for e in history] == ["rollback", "promote", "promote"]
    assert isinstance(evaluation, Evaluation)
    assert (evaluation.status, evaluation.version, evaluation.file) == ("queued", 2, training_file.id)
    assert fetched.id == evaluation.id and fetched.raw["options"]["max_examples"] == 3
    assert (comparison.version_a, comparison.version_b, comparison.status) == ("base", 2, "queued")
    assert (done.status, done.outcomes) == ("succeeded", {"wins": 2, "ties": 0, "losses": 1})
    assert "**2 wins, 0 ties, 1 losses**" in report
    assert sent == [(RUN_EVALUATION, [evaluation.id]), (RUN_COMPARISON, [comparison.id])]
