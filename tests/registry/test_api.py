"""The registry's HTTP API: models, versions, aliases (promote / rollback / history), evaluations
and comparisons — shapes, owner scoping, pagination, idempotency and the serving check's 409."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry.models import AliasEvent, Comparison, Evaluation, RunStatus
from tuninglab import dispatch
from tuninglab.task_names import RUN_COMPARISON, RUN_EVALUATION
from tunings.models import TrainingFile

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(tiny_adapter_version):
    """``versions(n, name="bot", owner=None)``: v1..vn of one model, each a servable adapter on tiny-llama."""

    def make(n: int, *, name: str = "bot", owner=None):
        return [tiny_adapter_version(model_name=name, owner=owner) for _ in range(n)]

    return make


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def _promote(client, name: str = "bot", **body):
    return client.post(f"/v1/models/{name}/promote", body, format="json")


def _rollback(client, name: str = "bot", **body):
    return client.post(f"/v1/models/{name}/rollback", body, format="json")


# --- GET /v1/models, GET /v1/models/{id} ----------------------------------------------------


def test_it_lists_base_models_the_callers_models_and_their_ft_ids(api_client, versions, other_user, tiny_base):
    (mine,) = versions(1, name="support-bot")
    mine.job.fine_tuned_model = f"ft:tiny-llama:alice:support:{mine.job_id}"
    mine.job.save(update_fields=["fine_tuned_model"])
    versions(1, name="theirs", owner=other_user)

    body = api_client.get("/v1/models").json()

    assert body["object"] == "list"
    assert [(m["id"], m["owned_by"], m["type"]) for m in body["data"]] == [
        ("tiny-llama", "system", "base_model"),
        ("support-bot", "alice", "registered_model"),
        (mine.job.fine_tuned_model, "alice", "fine_tuned_model"),
    ]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])


def test_it_lists_models_in_a_fixed_number_of_queries(api_client, versions):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert api_client.get("/v1/models").status_code == 200
        return len(ctx.captured_queries)

    for version in versions(1, name="one"):
        version.job.fine_tuned_model = f"ft:tiny-llama:alice::{version.job_id}"
        version.job.save(update_fields=["fine_tuned_model"])
    queries()  # warm per-process caches and the key's last-used stamp
    one = queries()
    for i in range(3):
        for version in versions(1, name=f"more-{i}"):
            version.job.fine_tuned_model = f"ft:tiny-llama:alice::{version.job_id}"
            version.job.save(update_fields=["fine_tuned_model"])

    assert len(api_client.get("/v1/models").json()["data"]) == 1 + 4 + 4
    assert queries() == one


def test_it_retrieves_a_base_model_a_registered_model_and_an_ft_id(api_client, versions):
    v1, _ = versions(2)
    v1.job.fine_tuned_model = f"ft:tiny-llama:alice::{v1.job_id}"
    v1.job.save(update_fields=["fine_tuned_model"])
    _promote(api_client, version=1)

    base = api_client.get("/v1/models/tiny-llama").json()
    model = api_client.get("/v1/models/bot").json()
    ft = api_client.get(f"/v1/models/{v1.job.fine_tuned_model}").json()

    assert (base["id"], base["owned_by"], base["type"]) == ("tiny-llama", "system", "base_model")
    assert (model["id"], model["owned_by"], model["type"]) == ("bot", "alice", "registered_model")
    assert (model["latest_version"], model["version_count"], model["aliases"]) == (2, 2, {"production": 1})
    assert (ft["id"], ft["type"]) == (v1.job.fine_tuned_model, "fine_tuned_model")
    assert ft["model_version"]["id"] == v1.id and ft["model_version"]["version"] == 1
    assert ft["model_version"]["aliases"] == ["production"]


def test_it_answers_404_for_another_owners_model_and_ft_id(api_client, other_api_client, versions):
    (mine,) = versions(1)
    mine.job.fine_tuned_model = f"ft:tiny-llama:alice::{mine.job_id}"
    mine.job.save(update_fields=["fine_tuned_model"])

    for path in ("/v1/models/bot", f"/v1/models/{mine.job.fine_tuned_model}", "/v1/models/no-such-model"):
        error = _error(other_api_client.get(path), 404)
        assert (error["code"], error["type"], error["param"]) == ("model_not_found", "invalid_request_error", "model")
    assert [m["id"] for m in other_api_client.get("/v1/models").json()["data"]] == ["tiny-llama"]


# --- versions --------------------------------------------------------------------------------


def test_it_lists_versions_newest_first_one_page_at_a_time(api_client, versions):
    v1, v2, v3 = versions(3)

    first = api_client.get("/v1/models/bot/versions", {"limit": 2}).json()
    second = api_client.get("/v1/models/bot/versions", {"limit": 2, "after": first["last_id"]}).json()

    assert [v["version"] for v in first["data"]] == [3, 2] and first["has_more"] is True
    assert [v["version"] for v in second["data"]] == [1] and second["has_more"] is False
    assert (first["first_id"], first["last_id"], second["last_id"]) == (v3.id, v2.id, v1.id)
    error = _error(api_client.get("/v1/models/bot/versions", {"after": "mv-unknown"}), 400)
    assert (error["code"], error["param"]) == ("invalid_cursor", "after")


def test_it_lists_versions_in_a_fixed_number_of_queries(api_client, versions):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert api_client.get("/v1/models/bot/versions").status_code == 200
        return len(ctx.captured_queries)

    versions(1)
    _promote(api_client)
    queries()  # warm per-process caches and the key's last-used stamp
    one = queries()
    versions(3)
    _promote(api_client, alias="staging")

    assert queries() == one


def test_it_shows_a_version_with_its_lineage_metrics_and_mlflow_state(api_client, versions, tiny_base):
    (version,) = versions(1)
    _promote(api_client, alias="staging")

    body = api_client.get("/v1/models/bot/versions/1").json()

    assert body == {
        "id": version.id,
        "object": "model.version",
        "model": "bot",
        "version": 1,
        "kind": "adapter",
        "aliases": ["staging"],
        "job_id": version.job_id,
        "base_model": {"name": "tiny-llama", "content_hash": tiny_base.content_hash},
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "lineage": body["lineage"],
        "metrics": version.metrics,
        "evaluation": None,
        "mlflow": {"run_id": None, "version": None, "synced_at": None, "error": None},
        "created_at": int(version.created_at.timestamp()),
    }
    assert len(version.sha256) == 64 and version.size_bytes > 0
    assert body["lineage"]["lora"]["rank"] == 8 and body["lineage"]["job"]["id"] == version.job_id
    assert body["metrics"]["final_loss"] == 1.25


def test_it_answers_404_for_unknown_versions(api_client, versions):
    versions(1)

    for path in ("/v1/models/bot/versions/2", "/v1/models/bot/versions/abc", "/v1/models/bot/versions/0"):
        error = _error(api_client.get(path), 404)
        assert (error["code"], error["param"]) == ("version_not_found", "version")
    assert _error(api_client.get("/v1/models/nope/versions"), 404)["code"] == "model_not_found"


def test_it_keeps_two_owners_models_of_one_name_apart(api_client, other_api_client, versions, other_user):
    mine = versions(2)
    (theirs,) = versions(1, owner=other_user)

    assert [v["id"] for v in api_client.get("/v1/models/bot/versions").json()["data"]] == [mine[1].id, mine[0].id]
    assert [v["id"] for v in other_api_client.get("/v1/models/bot/versions").json()["data"]] == [theirs.id]
    _error(other_api_client.get("/v1/models/bot/versions/2"), 404)
    _error(other_api_client.post("/v1/models/bot/promote", {"version": 2}, format="json"), 404)


# --- promote / rollback / aliases / history --------------------------------------------------


def test_it_promotes_and_rolls_back_twice_then_refuses_with_nothing_earlier(api_client, versions, user):
    versions(3)

    first = _promote(api_client, version=1, reason="first release")
    assert first.status_code == 200, first.content
    body = first.json()
    assert {k: body[k] for k in ("object", "model", "alias", "version", "previous_version")} == {
        "object": "model.alias_move",
        "model": "bot",
        "alias": "production",
        "version": 1,
        "previous_version": None,
    }
    assert body["event"]["kind"] == "promote" and body["event"]["actor"] == "alice"
    assert body["event"]["reason"] == "first release"
    newest = _promote(api_client).json()  # no version: the newest
    assert (newest["version"], newest["previous_version"]) == (3, 1)
    assert _promote(api_client, version=2).json()["version"] == 2

    back = _rollback(api_client, reason="v2 is broken").json()
    assert (back["version"], back["previous_version"], back["event"]["kind"]) == (3, 2, "rollback")
    further = _rollback(api_client).json()
    assert (further["version"], further["previous_version"]) == (1, 3)
    error = _error(_rollback(api_client), 409)
    assert error["code"] == "nothing_to_roll_back"

    events = AliasEvent.objects.order_by("id")
    assert [(e.kind, e.to_version.version) for e in events] == [
        ("promote", 1),
        ("promote", 3),
        ("promote", 2),
        ("rollback", 3),
        ("rollback", 1),
    ]
    assert {e.actor_id for e in events} == {user.id}
    assert api_client.get("/v1/models/bot/aliases").json()["data"][0]["version"] == 1


def test_it_rolls_back_to_a_given_version(api_client, versions):
    versions(3)
    _promote(api_client, version=3)

    body = _rollback(api_client, version=1).json()

    assert (body["version"], body["previous_version"], body["event"]["kind"]) == (1, 3, "rollback")


def test_it_answers_a_move_to_where_the_alias_already_points_without_an_event(api_client, versions):
    versions(1)
    _promote(api_client, version=1)

    body = _promote(api_client, version=1).json()

    assert (body["version"], body["previous_version"], body["event"]) == (1, 1, None)
    assert AliasEvent.objects.count() == 1


def test_it_replays_a_promote_with_the_same_idempotency_key(api_client, versions):
    versions(2)
    _promote(api_client, version=1)

    headers = {"HTTP_IDEMPOTENCY_KEY": "promote-v2"}
    first = api_client.post("/v1/models/bot/promote", {"version": 2}, format="json", **headers)
    again = api_client.post("/v1/models/bot/promote", {"version": 2}, format="json", **headers)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert AliasEvent.objects.count() == 2  # the replay moved nothing
    reused = api_client.post("/v1/models/bot/promote", {"version": 1}, format="json", **headers)
    assert _error(reused, 422)["code"] == "idempotency_key_reused"


def test_it_refuses_an_unservable_version_with_every_reason_and_keeps_the_alias(
    api_client, versions, tiny_adapter_version, settings
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "SERVING_MAX_LORA_RANK": 16}
    versions(1)
    _promote(api_client, version=1)
    tiny_adapter_version(model_name="bot", rank=32, modules=("q_proj", "lm_head"))

    error = _error(_promote(api_client, version=2), 409)

    assert error["code"] == "version_not_servable" and error["type"] == "invalid_request_error"
    codes = {d["code"] for d in error["details"]}
    assert {"rank_too_large", "unsupported_module"} <= codes
    assert all(d["message"] for d in error["details"])
    assert "rank" in error["message"] and "lm_head" in error["message"]
    assert api_client.get("/v1/models/bot/aliases").json()["data"][0]["version"] == 1
    assert AliasEvent.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"version": "two"}, "version", "invalid_value"),
        ({"version": 0}, "version", "invalid_value"),
        ({"version": True}, "version", "invalid_value"),
        ({"alias": "latest"}, "alias", "invalid_alias"),
        ({"alias": 7}, "alias", "invalid_type"),
        ({"reason": ["x"]}, "reason", "invalid_value"),
        ({"to_version": 1}, "to_version", "unknown_parameter"),
    ],
)
def test_it_rejects_a_bad_move_body_naming_the_field(api_client, versions, body, param, code):
    versions(1)

    error = _error(_promote(api_client, **body), 400)

    assert (error["param"], error["code"]) == (param, code)
    assert not AliasEvent.objects.exists()


def test_it_lists_aliases_and_pages_through_an_alias_history(api_client, versions, user):
    versions(3)
    _promote(api_client, version=1)
    _promote(api_client, version=2, reason="better")
    _promote(api_client, version=3, alias="staging")
    _rollback(api_client)

    aliases = api_client.get("/v1/models/bot/aliases").json()
    first = api_client.get("/v1/models/bot/aliases/production/history", {"limit": 2}).json()
    rest = api_client.get("/v1/models/bot/aliases/production/history", {"after": first["last_id"]}).json()

    assert [(a["alias"], a["version"], a["object"]) for a in aliases["data"]] == [
        ("production", 1, "model.alias"),
        ("staging", 3, "model.alias"),
    ]
    history = first["data"] + rest["data"]
    assert first["has_more"] is True and rest["has_more"] is False
    assert [(e["kind"], e["from_version"], e["to_version"], e["reason"]) for e in history] == [
        ("rollback", 2, 1, ""),
        ("promote", 1, 2, "better"),
        ("promote", None, 1, ""),
    ]
    assert {e["actor"] for e in history} == {"alice"} and {e["alias"] for e in history} == {"production"}
    assert all(isinstance(e["created_at"], int) and e["object"] == "model.alias_event" for e in history)
    assert _error(api_client.get("/v1/models/bot/aliases/canary/history"), 404)["code"] == "alias_not_found"
    bad = _error(api_client.get("/v1/models/bot/aliases/production/history", {"after": "x"}), 400)
    assert bad["code"] == "invalid_cursor"


# --- evaluations and comparisons -------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, list, str]]:
    """Tasks sent by name (``dispatch.send_task``), recorded instead of reaching a worker."""
    calls: list[tuple[str, list, str]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: calls.append((name, list(args), queue)))
    return calls


def test_it_queues_an_evaluation_and_shows_it(
    api_client, versions, training_file, sent, django_capture_on_commit_callbacks
):
    versions(1)

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/v1/models/bot/versions/1/evaluations", {"file": training_file.id, "max_examples": 5}, format="json"
        )

    assert response.status_code == 202, response.content
    body = response.json()
    evaluation = Evaluation.objects.get()
    assert sent == [(RUN_EVALUATION, [evaluation.id], "cpu")]
    assert {k: body[k] for k in ("id", "object", "status", "model", "version", "base_model", "file")} == {
        "id": evaluation.id,
        "object": "model.evaluation",
        "status": "queued",
        "model": "bot",
        "version": 1,
        "base_model": "tiny-llama",
        "file": training_file.id,
    }
    assert body["options"]["max_examples"] == 5
    assert api_client.get(f"/v1/evaluations/{evaluation.id}").json() == body
    listed = api_client.get("/v1/models/bot/versions/1/evaluations").json()
    assert [e["id"] for e in listed["data"]] == [evaluation.id] and "examples" not in listed["data"][0]


def test_it_rejects_bad_evaluation_requests(api_client, versions, training_file, other_user):
    versions(1)
    theirs = TrainingFile.objects.create(
        owner=other_user, filename="t.jsonl", sha256="1" * 64, bytes=1, storage_path="files/t.jsonl", status="processed"
    )
    url = "/v1/models/bot/versions/1/evaluations"

    assert _error(api_client.post(url, {}, format="json"), 400)["param"] == "file"
    assert _error(api_client.post(url, {"file": theirs.id}, format="json"), 404)["param"] == "file"
    bad = _error(api_client.post(url, {"file": training_file.id, "max_examples": 0}, format="json"), 400)
    assert (bad["code"], bad["param"]) == ("invalid_evaluation_options", "options.max_examples")
    unknown = _error(api_client.post(url, {"file": training_file.id, "temperature": 1}, format="json"), 400)
    assert (unknown["code"], unknown["param"]) == ("unknown_parameter", "temperature")
    assert not Evaluation.objects.exists()


def test_it_queues_a_comparison_with_the_base_and_serves_its_markdown_report(
    api_client, versions, training_file, sent, django_capture_on_commit_callbacks
):
    versions(1)

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/v1/models/bot/comparisons", {"version_a": "base", "version_b": 1, "file": training_file.id}, format="json"
        )

    assert response.status_code == 202, response.content
    body = response.json()
    comparison = Comparison.objects.get()
    assert sent == [(RUN_COMPARISON, [comparison.id], "cpu")]
    assert (body["object"], body["version_a"], body["version_b"], body["status"]) == (
        "model.comparison",
        "base",
        1,
        "queued",
    )
    # What a worker stores when it finishes (the runner's own tests cover computing it).
    Comparison.objects.filter(pk=comparison.pk).update(
        status=RunStatus.SUCCEEDED,
        table=[{"metric": "exact_match", "a": 0.0, "b": 0.75, "delta": 0.75, "higher_is_better": True}],
        outcomes={"wins": 3, "ties": 1, "losses": 0},
    )
    shown = api_client.get(f"/v1/comparisons/{comparison.id}").json()
    assert shown["outcomes"] == {"wins": 3, "ties": 1, "losses": 0} and shown["table"][0]["delta"] == 0.75

    report = api_client.get(f"/v1/comparisons/{comparison.id}/report")

    assert report.status_code == 200 and report["Content-Type"].startswith("text/markdown")
    text = report.content.decode()
    assert text.startswith("## A/B comparison: bot v1 (B) vs base (tiny-llama) (A)")
    assert "**3 wins, 1 ties, 0 losses**" in text and "| exact match ↑ | 0.000 | 0.750 | +0.750 |" in text


def test_it_rejects_comparisons_without_a_version_or_of_one_side_twice(api_client, versions, training_file):
    versions(1)
    url = "/v1/models/bot/comparisons"

    both_base = _error(
        api_client.post(url, {"version_a": "base", "version_b": "base", "file": training_file.id}, format="json"), 400
    )
    same = _error(api_client.post(url, {"version_a": 1, "version_b": 1, "file": training_file.id}, format="json"), 400)
    missing = _error(
        api_client.post(url, {"version_a": 9, "version_b": 1, "file": training_file.id}, format="json"), 404
    )

    assert both_base["param"] == "version_b"
    assert same["code"] == "same_sides"
    assert (missing["code"], missing["param"]) == ("version_not_found", "version_a")
    assert not Comparison.objects.exists()


# --- owner scoping on every route ------------------------------------------------------------


def test_it_answers_404_on_every_route_for_another_owners_model(
    api_client, other_api_client, versions, training_file, sent
):
    versions(2)
    _promote(api_client, version=1)
    evaluation_id = api_client.post(
        "/v1/models/bot/versions/1/evaluations", {"file": training_file.id}, format="json"
    ).json()["id"]
    comparison_id = api_client.post(
        "/v1/models/bot/comparisons", {"version_a": 1, "version_b": 2, "file": training_file.id}, format="json"
    ).json()["id"]
    run = {"file": training_file.id}
    routes = [
        ("get", "/v1/models/bot", None),
        ("get", "/v1/models/bot/versions", None),
        ("get", "/v1/models/bot/versions/1", None),
        ("get", "/v1/models/bot/aliases", None),
        ("get", "/v1/models/bot/aliases/production/history", None),
        ("post", "/v1/models/bot/promote", {"version": 1}),
        ("post", "/v1/models/bot/rollback", {}),
        ("get", "/v1/models/bot/versions/1/evaluations", None),
        ("post", "/v1/models/bot/versions/1/evaluations", run),
        ("post", "/v1/models/bot/comparisons", {**run, "version_a": 1, "version_b": 2}),
        ("get", f"/v1/evaluations/{evaluation_id}", None),
        ("get", f"/v1/comparisons/{comparison_id}", None),
        ("get", f"/v1/comparisons/{comparison_id}/report", None),
    ]

    for method, path, body in routes:
        error = _error(getattr(other_api_client, method)(path, body, format="json"), 404)
        assert error["type"] == "invalid_request_error", path

    assert AliasEvent.objects.count() == 1
    assert Evaluation.objects.count() == 1 and Comparison.objects.count() == 1
