"""Registry admin: promote / rollback actions through their confirmation pages (the same services
as the API), lineage and alias history on the pages, read-only evaluations and comparisons, and
every list in a fixed number of queries."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from registry.models import Alias, AliasEvent, Comparison, Evaluation, ModelVersion, RegisteredModel, RunStatus
from registry.services.aliases import model_promote

pytestmark = pytest.mark.django_db


def _url(model, name: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{name}", args=args)


def _action(client, model, action: str, objs, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objs], **extra}
    return client.post(_url(model, "changelist"), data, follow=True)


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200, url
    return len(ctx.captured_queries)


# --- promote / rollback actions --------------------------------------------------------------


def test_it_promotes_through_the_confirmation_page_as_the_admin_user(admin_client, admin_user, tiny_adapter_version):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    model_promote(owner=v1.owner, name="bot", version=1)

    page = _action(admin_client, ModelVersion, "promote_versions", [v2])

    assert page.status_code == 200
    html = page.content.decode()
    assert "Promote to an alias" in html and "production → v1" in html and "<td>v2</td>" in html
    assert Alias.objects.get().version_id == v1.id  # the page alone changes nothing

    done = _action(
        admin_client, ModelVersion, "promote_versions", [v2], apply="1", alias="production", reason="v2 is better"
    )

    assert any("alice/bot@production: promote v1 → v2." in m for m in _messages(done))
    assert Alias.objects.get().version_id == v2.id
    event = AliasEvent.objects.latest("id")
    assert (event.kind, event.from_version_id, event.to_version_id) == ("promote", v1.id, v2.id)
    assert (event.actor_id, event.reason) == (admin_user.id, "v2 is better")


def test_it_shows_a_refused_check_as_an_error_and_moves_nothing(admin_client, tiny_adapter_version, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16}
    v1 = tiny_adapter_version()
    model_promote(owner=v1.owner, name="bot", version=1)
    too_big = tiny_adapter_version(rank=32)

    done = _action(admin_client, ModelVersion, "promote_versions", [too_big], apply="1", alias="production")

    (message,) = _messages(done)
    assert "alice/bot@production: not moved (version_not_servable)" in message
    assert "[rank_too_large]" in message and "32" in message
    assert Alias.objects.get().version_id == v1.id
    assert AliasEvent.objects.count() == 1


def test_it_refuses_two_versions_of_one_model_in_one_promotion(admin_client, tiny_adapter_version):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()

    done = _action(admin_client, ModelVersion, "promote_versions", [v1, v2], apply="1", alias="production")

    assert any("at most one version per model" in m for m in _messages(done))
    assert not Alias.objects.exists()


def test_it_rolls_back_through_the_confirmation_page_twice_then_reports_nothing_earlier(
    admin_client, admin_user, tiny_adapter_version
):
    v1, v2, v3 = (tiny_adapter_version() for _ in range(3))
    for version in (v1, v2, v3):
        model_promote(owner=version.owner, name="bot", version=version.version)
    alias = Alias.objects.get()

    page = _action(admin_client, Alias, "rollback_aliases", [alias])

    assert page.status_code == 200
    html = page.content.decode()
    assert "Roll back aliases" in html and "<td>production</td>" in html and "<td>v3</td>" in html

    first = _action(admin_client, Alias, "rollback_aliases", [alias], apply="1", reason="v3 broke checkout")
    second = _action(admin_client, Alias, "rollback_aliases", [alias], apply="1")
    third = _action(admin_client, Alias, "rollback_aliases", [alias], apply="1")

    assert any("alice/bot@production: rollback v3 → v2." in m for m in _messages(first))
    assert any("alice/bot@production: rollback v2 → v1." in m for m in _messages(second))
    assert any("not moved (nothing_to_roll_back)" in m for m in _messages(third))
    alias.refresh_from_db()
    assert alias.version_id == v1.id
    rollbacks = AliasEvent.objects.filter(kind="rollback").order_by("id")
    assert [(e.to_version_id, e.actor_id) for e in rollbacks] == [(v2.id, admin_user.id), (v1.id, admin_user.id)]
    assert rollbacks[0].reason == "v3 broke checkout"


def test_it_rolls_back_to_a_given_version(admin_client, tiny_adapter_version):
    v1, _, v3 = (tiny_adapter_version() for _ in range(3))
    model_promote(owner=v3.owner, name="bot", version=3)
    alias = Alias.objects.get()

    _action(admin_client, Alias, "rollback_aliases", [alias], apply="1", to_version="1")

    alias.refresh_from_db()
    assert alias.version_id == v1.id


def test_it_offers_the_moves_only_to_users_who_may_change_aliases(client, django_user_model, tiny_adapter_version):
    version = tiny_adapter_version()
    viewer = django_user_model.objects.create_user(username="viewer", password="pw-viewer-1", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_modelversion", "view_alias"]))
    client.force_login(viewer)

    html = client.get(_url(ModelVersion, "changelist")).content.decode()
    assert "promote_versions" not in html
    _action(client, ModelVersion, "promote_versions", [version], apply="1", alias="production")

    assert not Alias.objects.exists()

    viewer.user_permissions.add(Permission.objects.get(codename="change_alias"))
    viewer = django_user_model.objects.get(pk=viewer.pk)  # drop the cached permissions
    client.force_login(viewer)
    assert "promote_versions" in client.get(_url(ModelVersion, "changelist")).content.decode()


# --- pages -----------------------------------------------------------------------------------


def test_it_shows_a_versions_lineage_evaluation_and_alias_history(admin_client, tiny_adapter_version, training_file):
    v1, _ = tiny_adapter_version(), tiny_adapter_version()
    model_promote(owner=v1.owner, name="bot", version=1, reason="first <b>release</b>")
    model_promote(owner=v1.owner, name="bot", version=2, alias="production")
    ModelVersion.objects.filter(pk=v1.pk).update(evaluation={"exact_match": 0.75, "evaluation_id": "eval-1"})
    evaluation = Evaluation.objects.create(
        owner=v1.owner, version=v1, base_model=v1.base_model, dataset=training_file, metrics={"rouge_l": 0.5}
    )

    html = admin_client.get(_url(ModelVersion, "change", v1.pk)).content.decode()

    assert "<pre>{\n  &quot;base_model&quot;: {" in html  # pretty-printed and escaped
    assert "&quot;rank&quot;: 8" in html and v1.sha256 in html
    assert "&quot;exact_match&quot;: 0.75" in html
    assert evaluation.id in html
    # Both moves touched v1: to it (first release), then from it to v2.
    assert "<td>promote</td><td>-</td><td>v1</td>" in html
    assert "<td>promote</td><td>v1</td><td>v2</td>" in html
    assert "first &lt;b&gt;release&lt;/b&gt;" in html


def test_it_shows_the_alias_history_on_the_alias_page(admin_client, tiny_adapter_version):
    v1 = tiny_adapter_version()
    tiny_adapter_version()
    model_promote(owner=v1.owner, name="bot", version=1, actor=v1.owner, reason="launch")
    model_promote(owner=v1.owner, name="bot", version=2, actor=v1.owner, reason="retrained")

    html = admin_client.get(_url(Alias, "change", Alias.objects.get().pk)).content.decode()

    assert "History (newest first)" in html
    assert html.index("retrained") < html.index("launch")
    assert html.count("alice") >= 3  # owner, and the actor of each move


def test_it_shows_a_comparison_with_its_table_and_markdown(admin_client, tiny_adapter_version, training_file):
    version = tiny_adapter_version()
    comparison = Comparison.objects.create(
        owner=version.owner,
        version_a=None,
        version_b=version,
        base_model=version.base_model,
        dataset=training_file,
        status=RunStatus.SUCCEEDED,
        table=[{"metric": "rouge_l", "a": 0.25, "b": 0.75, "delta": 0.5, "higher_is_better": True}],
        outcomes={"wins": 4, "ties": 1, "losses": 0},
    )

    html = admin_client.get(_url(Comparison, "change", comparison.pk)).content.decode()

    assert "<td>rouge_l</td><td>0.25</td><td>0.75</td><td>0.5</td>" in html
    assert "4 / 1 / 0" in html
    assert "<pre>## A/B comparison: bot v1 (B) vs base (tiny-llama) (A)" in html
    assert "**4 wins, 1 ties, 0 losses**" in html


def test_it_lists_registered_models_with_their_version_counts(admin_client, tiny_adapter_version):
    tiny_adapter_version(model_name="bot")
    tiny_adapter_version(model_name="bot")
    tiny_adapter_version(model_name="other")

    response = admin_client.get(_url(RegisteredModel, "changelist"))

    rows = {m.name: m.version_count for m in response.context["cl"].result_list}
    assert rows == {"bot": 2, "other": 1}


def test_it_keeps_every_registry_page_view_only(admin_client, tiny_adapter_version, training_file):
    version = tiny_adapter_version()
    model_promote(owner=version.owner, name="bot", version=1)
    evaluation = Evaluation.objects.create(
        owner=version.owner, version=version, base_model=version.base_model, dataset=training_file
    )
    rows = {
        ModelVersion: version,
        RegisteredModel: version.registered_model,
        Alias: Alias.objects.get(),
        AliasEvent: AliasEvent.objects.get(),
        Evaluation: evaluation,
    }
    for model, obj in rows.items():
        html = admin_client.get(_url(model, "change", obj.pk)).content.decode()
        assert 'name="_save"' not in html, model.__name__
        assert admin_client.get(_url(model, "add")).status_code == 403, model.__name__
        assert admin_client.post(_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403


# --- fixed query counts ----------------------------------------------------------------------


def _one_of_everything(owner, tiny_adapter_version, training_file, name: str) -> None:
    """A version with an alias moved twice, an evaluation and a comparison, for ``owner``."""
    v1 = tiny_adapter_version(owner=owner, model_name=name)
    v2 = tiny_adapter_version(owner=owner, model_name=name)
    model_promote(owner=owner, name=name, version=1, actor=owner)
    model_promote(owner=owner, name=name, version=2, actor=owner)
    Evaluation.objects.create(owner=owner, version=v2, base_model=v2.base_model, dataset=training_file)
    Comparison.objects.create(owner=owner, version_a=v1, version_b=v2, base_model=v2.base_model, dataset=training_file)


def test_it_lists_and_shows_registry_pages_in_a_fixed_number_of_queries(
    admin_client, user, django_user_model, tiny_adapter_version, training_file
):
    _one_of_everything(user, tiny_adapter_version, training_file, "bot")
    version = ModelVersion.objects.get(version=1, registered_model__name="bot")
    urls = [_url(model, "changelist") for model in (ModelVersion, RegisteredModel, Alias, AliasEvent)]
    urls += [_url(Evaluation, "changelist"), _url(Comparison, "changelist")]
    urls += [_url(ModelVersion, "change", version.pk), _url(Alias, "change", Alias.objects.get().pk)]
    for url in urls:
        _queries(admin_client, url)  # warm per-process caches (content types, permissions)
    one = {url: _queries(admin_client, url) for url in urls}

    for i in range(3):
        owner = django_user_model.objects.create_user(username=f"owner-{i}")
        _one_of_everything(owner, tiny_adapter_version, training_file, f"line-{i}")
    alias = Alias.objects.get(registered_model__name="bot")
    for target in (1, 2, 1):  # more history on the pages that show it
        model_promote(owner=user, name="bot", version=target, alias=alias.alias, actor=user)

    assert {url: _queries(admin_client, url) for url in urls} == one


# --- version comparison ------------------------------------------------------------------------


def test_it_compares_versions_side_by_side_with_a_row_per_metric(admin_client, tiny_adapter_version):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version(rank=4)
    ModelVersion.objects.filter(pk=v2.pk).update(
        metrics={"final_loss": 0.5, "eval": {"loss": 0.75}}, evaluation={"rouge_l": 0.9}
    )
    model_promote(owner=v1.owner, name="bot", version=2)

    page = _action(admin_client, ModelVersion, "compare_versions", [v1, v2])

    assert page.status_code == 200
    rows = dict(page.context["rows"])
    assert rows["version"] == ["v1", "v2"]
    assert rows["metrics.final_loss"] == [1.25, 0.5]
    assert rows["metrics.eval.loss"] == [None, 0.75]  # a metric one version lacks: an empty cell
    assert rows["evaluation.rouge_l"] == [None, 0.9]
    assert rows["aliases"] == ["-", "production"]
    assert rows["hyperparameters.max_steps"] == [3, 3]
    assert rows["traffic.requests"] == [0, 0]
    html = page.content.decode()
    assert 'id="version-comparison"' in html and "<th>metrics.eval.loss</th>" in html


def test_it_refuses_to_compare_a_single_version(admin_client, tiny_adapter_version):
    v1 = tiny_adapter_version()

    page = _action(admin_client, ModelVersion, "compare_versions", [v1])

    assert "Select 2 to 6 versions to compare." in _messages(page)
    assert "rows" not in page.context
