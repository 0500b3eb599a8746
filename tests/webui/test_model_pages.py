"""Model pages: login, owner scoping, versions side by side, promote / rollback, A/B route and live traffic."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inference.models import Route, RouteSplit
from registry.models import Alias, AliasEvent, Evaluation, RunStatus
from registry.services.aliases import model_promote
from registry.services.traffic import traffic_record

pytestmark = pytest.mark.django_db


def model_urls(name: str) -> dict[str, str]:
    kwargs = {"name": name}
    return {
        "detail": reverse("webui:model-detail", kwargs=kwargs),
        "live": reverse("webui:model-live", kwargs=kwargs),
        "promote": reverse("webui:model-promote", kwargs=kwargs),
        "rollback": reverse("webui:model-rollback", kwargs=kwargs),
    }


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def production(user, name: str = "bot") -> int | None:
    alias = Alias.objects.filter(registered_model__owner=user, registered_model__name=name, alias="production").first()
    return alias.version.version if alias else None


def test_the_urls_are_the_documented_ones():
    assert model_urls("bot") == {
        "detail": "/models/bot/",
        "live": "/models/bot/live.json",
        "promote": "/models/bot/promote",
        "rollback": "/models/bot/rollback",
    }
    assert reverse("webui:model-list") == "/models/"


def test_every_model_page_needs_a_login(client, make_version, user):
    make_version()
    urls = model_urls("bot")
    for url in ("/models/", urls["detail"], urls["live"]):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"] == f"/accounts/login/?next={url}", url
    for url in (urls["promote"], urls["rollback"]):
        response = client.post(url, {"version": 1, "alias": "production"})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    assert production(user) is None


def test_another_users_model_is_a_404_everywhere(alice_client, make_version, other_user):
    make_version(owner=other_user, model_name="secret")
    make_version(owner=other_user, model_name="secret")
    model_promote(owner=other_user, name="secret", version=1)
    urls = model_urls("secret")
    assert alice_client.get(urls["detail"]).status_code == 404
    assert alice_client.get(urls["live"]).status_code == 404
    assert alice_client.post(urls["promote"], {"version": 2, "alias": "production"}).status_code == 404
    assert alice_client.post(urls["rollback"], {"alias": "production"}).status_code == 404
    assert production(other_user, "secret") == 1
    assert "secret" not in alice_client.get("/models/").content.decode()


def test_the_list_shows_my_models_with_counts_and_aliases(alice_client, make_version, user, other_user):
    make_version()
    make_version()
    make_version(model_name="other-bot")
    make_version(owner=other_user, model_name="mallory-bot")
    model_promote(owner=user, name="bot", version=2)
    page = alice_client.get("/models/").content.decode()
    assert re.findall(r'<tr data-model="([^"]+)"', page) == ["bot", "other-bot"]
    row = page[page.index('data-model="bot"') : page.index('data-model="other-bot"')]
    assert '<td class="num">2</td>' in row and "v2" in row and "production &rarr; v2" in row


def test_the_detail_page_shows_versions_metrics_side_by_side(alice_client, make_version, user, training_file):
    v1 = make_version(final_loss=1.5, eval_loss=1.7)
    v2 = make_version(final_loss=0.9, eval_loss=1.1)
    Evaluation.objects.create(
        owner=user,
        version=v1,
        base_model=v1.base_model,
        dataset=training_file,
        status=RunStatus.SUCCEEDED,
        metrics={"exact_match": 0.25, "rouge_l": 0.5},
    )
    Evaluation.objects.create(
        owner=user,
        version=v2,
        base_model=v2.base_model,
        dataset=training_file,
        status=RunStatus.SUCCEEDED,
        metrics={"exact_match": 0.75, "rouge_l": 0.8},
    )
    Evaluation.objects.create(
        owner=user, version=v2, base_model=v2.base_model, dataset=training_file, status=RunStatus.RUNNING
    )
    page = alice_client.get(model_urls("bot")["detail"]).content.decode()
    table = page[page.index('id="versions"') : page.index("</table>", page.index('id="versions"'))]
    header = re.findall(r"<th[^>]*>([^<]+)</th>", table)
    assert header[:8] == [
        "Version",
        "Aliases",
        "Base",
        "Created",
        "final train loss",
        "eval loss",
        "exact match",
        "ROUGE-L F1",
    ]
    rows = re.findall(r'<tr data-version="(\d+)">(.*?)</tr>', table, re.S)
    assert [number for number, _ in rows] == ["2", "1"]  # newest first
    cells = {n: re.findall(r'<td class="num">([^<]*)</td>', body) for n, body in rows}
    assert cells["2"] == ["v2", "0.9000", "1.1000", "0.7500", "0.8000"]
    assert cells["1"] == ["v1", "1.5000", "1.7000", "0.2500", "0.5000"]
    assert "(running)" in dict(rows)["2"]
    # Each version links to the job that made it.
    assert f'href="/jobs/{v1.job_id}/"' in table and f'href="/jobs/{v2.job_id}/"' in table


def test_promote_moves_the_alias_and_records_who_and_why(alice_client, make_version, user):
    make_version()
    make_version()
    urls = model_urls("bot")
    response = alice_client.post(urls["promote"], {"version": "1", "alias": "production", "reason": "first"})
    assert response.status_code == 302 and response["Location"] == urls["detail"]
    assert production(user) == 1
    assert texts(response) == ["bot@production now points at v1."]
    alice_client.post(urls["promote"], {"version": "2", "reason": "better"})  # alias defaults to production
    assert production(user) == 2
    event = AliasEvent.objects.order_by("-id").first()
    assert (event.kind, event.from_version.version, event.to_version.version) == ("promote", 1, 2)
    assert (event.actor, event.reason) == (user, "better")
    page = alice_client.get(urls["detail"]).content.decode()
    history = page[page.index('id="alias-history"') :]
    assert history.index("better") < history.index("first")  # newest first


def test_rollback_moves_the_alias_back(alice_client, make_version, user):
    for _ in range(3):
        make_version()
    for number in (1, 2, 3):
        model_promote(owner=user, name="bot", version=number)
    urls = model_urls("bot")
    response = alice_client.post(urls["rollback"], {"alias": "production", "reason": "regression"})
    assert response.status_code == 302 and production(user) == 2
    assert texts(response) == ["bot@production rolled back to v2."]
    alice_client.post(urls["rollback"], {"alias": "production", "to_version": "3"})
    assert production(user) == 3
    event = AliasEvent.objects.order_by("-id").first()
    assert (event.kind, event.to_version.version, event.actor) == ("rollback", 3, user)


@pytest.mark.parametrize(
    ("path", "data", "expected"),
    [
        ("promote", {"version": "1", "alias": "Not Valid!"}, "(invalid_alias)"),
        ("promote", {"version": "9", "alias": "production"}, "(version_not_found)"),
        ("promote", {"version": "abc", "alias": "production"}, "(invalid_version)"),
        ("rollback", {"alias": "production"}, "(nothing_to_roll_back)"),
        ("rollback", {"alias": "staging"}, "(alias_not_found)"),
        ("rollback", {"alias": "production", "to_version": "x"}, "(invalid_version)"),
    ],
)
def test_refused_moves_are_messages_and_move_nothing(alice_client, make_version, user, path, data, expected):
    make_version()
    model_promote(owner=user, name="bot", version=1)
    before = AliasEvent.objects.count()
    response = alice_client.post(model_urls("bot")[path], data, follow=True)
    assert response.status_code == 200
    assert any(expected in message for message in texts(response)), texts(response)
    assert production(user) == 1 and AliasEvent.objects.count() == before


def test_promote_and_rollback_need_post_and_the_csrf_token(user, make_version):
    make_version()
    make_version()
    urls = model_urls("bot")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.get(urls["promote"]).status_code == 405
    assert strict.get(urls["rollback"]).status_code == 405
    assert strict.post(urls["promote"], {"version": 1, "alias": "production"}).status_code == 403
    assert strict.post(urls["rollback"], {"alias": "production"}).status_code == 403
    assert production(user) is None
    page = strict.get(urls["detail"]).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = strict.post(urls["promote"], {"version": 2, "alias": "production", "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and production(user) == 2


def test_the_detail_page_has_a_promote_form_per_version_and_a_rollback_form(alice_client, make_version, user):
    make_version()
    make_version()
    page = alice_client.get(model_urls("bot")["detail"]).content.decode()
    forms = re.findall(
        r'<form class="promote-form inline" method="post" action="/models/bot/promote" onsubmit="([^"]+)"', page
    )
    assert len(forms) == 2 and all(f.startswith("return confirm(") for f in forms)
    assert 'id="rollback-form"' not in page  # no alias yet
    model_promote(owner=user, name="bot", version=2)
    page = alice_client.get(model_urls("bot")["detail"]).content.decode()
    assert re.search(
        r'<form id="rollback-form" method="post" action="/models/bot/rollback" onsubmit="return confirm', page
    )


def test_no_route_is_said_and_a_route_is_shown_with_each_versions_traffic(alice_client, make_version, user):
    v1, v2, v3 = make_version(), make_version(), make_version()
    urls = model_urls("bot")
    page = alice_client.get(urls["detail"]).content.decode()
    assert "No route:" in page
    assert alice_client.get(urls["live"]).json()["route"] is None
    route = Route.objects.create(
        registered_model=v1.registered_model, sticky="header", shadow_version=v3, shadow_percent=10
    )
    RouteSplit.objects.create(route=route, version=v1, weight=90)
    RouteSplit.objects.create(route=route, version=v2, weight=10)
    for latency in (100.0, 300.0):
        traffic_record(version_id=v1.id, latency_ms=latency, prompt_tokens=5, completion_tokens=7)
    traffic_record(version_id=v2.id, latency_ms=50.0, error=True)
    traffic_record(version_id=v3.id, latency_ms=80.0, shadow=True)
    body = alice_client.get(urls["live"]).json()
    assert body["route"]["splits"] == [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]
    assert body["route"]["sticky"] == "header" and body["route"]["shadow"] == {"version": 3, "percent": 10}
    by_version = {v["version"]: v for v in body["versions"]}
    assert (by_version[1]["requests"], by_version[1]["prompt_tokens"], by_version[1]["completion_tokens"]) == (
        2,
        10,
        14,
    )
    assert (by_version[1]["mean_latency_ms"], by_version[1]["max_latency_ms"], by_version[1]["share"]) == (
        200.0,
        300.0,
        90.0,
    )
    assert (by_version[2]["requests"], by_version[2]["errors"], by_version[2]["error_rate"]) == (1, 1, 1.0)
    assert (by_version[3]["shadow_requests"], by_version[3]["requests"]) == (1, 0)
    assert by_version[3]["roles"] == ["shadow 10%", "latest"]
    page = alice_client.get(urls["detail"]).content.decode()
    assert "Sticky by <strong>header</strong>" in page
    traffic = page[page.index('id="traffic"') :]
    assert re.search(r'<tr data-version="1">.*?data-key="requests">2<', traffic, re.S)


def test_live_traffic_changes_between_polls(alice_client, make_version, user):
    v1 = make_version()
    model_promote(owner=user, name="bot", version=1)
    url = model_urls("bot")["live"]
    assert alice_client.get(url).json()["versions"][0]["requests"] == 0
    traffic_record(version_id=v1.id, latency_ms=10.0)
    body = alice_client.get(url).json()
    assert body["aliases"] == {"production": 1}
    assert body["versions"][0]["requests"] == 1 and body["versions"][0]["roles"] == ["@production", "latest"]


def test_user_data_on_model_pages_is_escaped(alice_client, make_version, user):
    attack = "<script>alert(1)</script>"
    v1 = make_version()
    v1.registered_model.description = attack
    v1.registered_model.save(update_fields=["description"])
    model_promote(owner=user, name="bot", version=1, reason=attack)
    for url in ("/models/", model_urls("bot")["detail"]):
        page = alice_client.get(url).content.decode()
        assert attack not in page, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, url


def test_the_detail_page_query_count_does_not_grow_with_versions(
    alice_client, make_version, user, training_file, django_assert_max_num_queries
):
    def add(n: int) -> None:
        for _ in range(n):
            version = make_version()
            Evaluation.objects.create(
                owner=user,
                version=version,
                base_model=version.base_model,
                dataset=training_file,
                status=RunStatus.SUCCEEDED,
                metrics={"exact_match": 0.5},
            )
            traffic_record(version_id=version.id, latency_ms=5.0)

    add(2)
    model_promote(owner=user, name="bot", version=1)
    urls = model_urls("bot")
    with CaptureQueriesContext(connection) as detail:
        assert alice_client.get(urls["detail"]).status_code == 200
    with CaptureQueriesContext(connection) as live:
        assert alice_client.get(urls["live"]).status_code == 200
    with CaptureQueriesContext(connection) as listing:
        assert alice_client.get("/models/").status_code == 200
    add(8)
    for name in ("a-bot", "b-bot", "c-bot"):
        make_version(model_name=name)
    with django_assert_max_num_queries(len(detail)):
        assert alice_client.get(urls["detail"]).status_code == 200
    with django_assert_max_num_queries(len(live)):
        assert alice_client.get(urls["live"]).status_code == 200
    with django_assert_max_num_queries(len(listing)):
        assert alice_client.get("/models/").status_code == 200
