"""Reading and cancelling jobs on the seed, resource and OpenAI routes; owner scoping; lists."""

from __future__ import annotations

import pytest

from tests.tunings.apis.conftest import make_file
from tunings.models import Checkpoint, TuningJob
from tunings.services import state

pytestmark = pytest.mark.django_db

DETAIL_ROUTES = ("/v1/tunings/{id}", "/v1/tunings/{id}/", "/v1/fine_tuning/jobs/{id}", "/v1/fine_tuning/jobs/{id}/")
LIST_ROUTES = ("/v1/tunings.list", "/v1/tunings", "/v1/tunings/", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/")


def start(job_id: str) -> TuningJob:
    job = state.tuning_job_claim(job_id=job_id, worker_id="test-worker")
    assert job is not None
    return job


def test_it_reads_a_job_on_every_detail_route(api_client, create_job):
    job = create_job()
    for route in DETAIL_ROUTES:
        response = api_client.get(route.format(id=job["id"]))
        assert response.status_code == 200, route
        assert response.json() == job


def test_it_answers_tunings_get_with_status_loss_and_progress_text(api_client, create_job):
    job_id = create_job()["id"]
    running = start(job_id)
    assert state.tuning_job_record_progress(
        job_id=job_id,
        token=running.fencing_token,
        fields={
            "progress": 60.0,
            "current_loss": 0.42,
            "current_step": 6,
            "total_steps": 10,
            "eta_seconds": 30.0,
            "learning_rate": 1e-4,
            "tokens_per_second": 512.0,
        },
    )
    body = api_client.get("/v1/tunings.get", {"job_id": job_id}).json()
    assert body["status"] == "running"
    assert body["loss"] == 0.42
    assert body["progress"] == "60%"
    assert body["progress_percent"] == 60.0
    assert body["current_step"] == 6
    assert body["total_steps"] == 10
    assert body["attempt"] == 1
    assert body["queue_position"] is None
    assert isinstance(body["estimated_finish"], int)
    # the whole job object is there too, with the numeric progress on the other routes
    detail = api_client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert detail["progress"] == 60.0
    assert detail["progress_text"] == "60%"
    assert set(detail) <= set(body)


def test_it_requires_job_id_on_tunings_get(api_client):
    response = api_client.get("/v1/tunings.get")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "job_id"


def test_it_hides_other_users_jobs_everywhere(api_client, other_api_client, create_job):
    job_id = create_job()["id"]
    reads = [
        f"/v1/tunings/{job_id}",
        f"/v1/fine_tuning/jobs/{job_id}",
        f"/v1/tunings/{job_id}/events",
        f"/v1/fine_tuning/jobs/{job_id}/events",
        f"/v1/tunings/{job_id}/checkpoints",
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
        f"/v1/tunings.get?job_id={job_id}",
    ]
    for route in reads:
        response = other_api_client.get(route)
        assert response.status_code == 404, route
        assert response.json()["error"]["code"] == "not_found"
    for route in (f"/v1/tunings/{job_id}/cancel", f"/v1/fine_tuning/jobs/{job_id}/cancel"):
        assert other_api_client.post(route).status_code == 404
    response = other_api_client.post("/v1/tunings.cancel", {"job_id": job_id}, format="json")
    assert response.status_code == 404
    for route in LIST_ROUTES:
        assert other_api_client.get(route).json()["data"] == []
    assert TuningJob.objects.get(id=job_id).status == "queued"  # untouched


def test_it_answers_404_with_the_same_shape_for_unknown_and_foreign_ids(api_client, other_api_client, create_job):
    job_id = create_job()["id"]
    foreign = other_api_client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["error"]
    unknown = api_client.get("/v1/fine_tuning/jobs/ftjob-000000000000000000000000").json()["error"]
    assert foreign["code"] == unknown["code"] == "not_found"
    assert foreign["param"] == unknown["param"] == "job_id"


@pytest.mark.parametrize(
    "cancel",
    [
        lambda c, job_id: c.post(f"/v1/tunings/{job_id}/cancel"),
        lambda c, job_id: c.post(f"/v1/tunings/{job_id}/cancel/"),
        lambda c, job_id: c.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"),
        lambda c, job_id: c.post("/v1/tunings.cancel", {"job_id": job_id}, format="json"),
    ],
    ids=["resource", "resource-slash", "openai", "seed"],
)
def test_it_cancels_on_every_route_and_refuses_a_finished_job(api_client, create_job, cancel):
    job_id = create_job()["id"]
    response = cancel(api_client, job_id)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert isinstance(response.json()["finished_at"], int)

    again = cancel(api_client, job_id)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_state"
    assert again.json()["error"]["type"] == "invalid_request_error"


def test_it_requests_cancellation_of_a_running_job(api_client, create_job):
    job_id = create_job()["id"]
    start(job_id)
    response = api_client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running"  # the worker stops the child at the next step
    assert body["cancel_requested"] is True


def test_it_lists_events_newest_first_with_pagination(api_client, create_job):
    job_id = create_job()["id"]
    for i in range(3):
        state.job_event_add(job_id=job_id, message=f"step {i}", type="metrics", data={"step": i, "loss": 1.0 - i / 10})
    for route in (f"/v1/tunings/{job_id}/events", f"/v1/fine_tuning/jobs/{job_id}/events/"):
        body = api_client.get(route).json()
        assert body["object"] == "list"
        assert body["has_more"] is False
        messages = [event["message"] for event in body["data"]]
        assert messages == ["step 2", "step 1", "step 0", "Files validated; job queued.", messages[-1]]
        assert messages[-1].startswith("Job created")
        first = body["data"][0]
        assert set(first) == {"object", "id", "created_at", "level", "message", "type", "data"}
        assert first["object"] == "fine_tuning.job.event"
        assert first["type"] == "metrics"
        assert first["data"] == {"step": 2, "loss": 0.8}

    page1 = api_client.get(f"/v1/fine_tuning/jobs/{job_id}/events", {"limit": 2}).json()
    assert [e["message"] for e in page1["data"]] == ["step 2", "step 1"]
    assert page1["has_more"] is True
    page2 = api_client.get(f"/v1/fine_tuning/jobs/{job_id}/events", {"limit": 2, "after": page1["last_id"]}).json()
    assert [e["message"] for e in page2["data"]] == ["step 0", "Files validated; job queued."]
    assert page2["has_more"] is True
    page3 = api_client.get(f"/v1/fine_tuning/jobs/{job_id}/events", {"limit": 2, "after": page2["last_id"]}).json()
    assert len(page3["data"]) == 1
    assert page3["has_more"] is False


def test_it_lists_checkpoints_highest_step_first(api_client, create_job, settings):
    job_id = create_job(suffix="bot")["id"]
    for step in (10, 20, 30):
        (settings.DATA_DIR / "ckpt" / str(step)).mkdir(parents=True)  # only checkpoints on disk are listed
        Checkpoint.objects.create(job_id=job_id, step=step, path=f"ckpt/{step}", metrics={"train_loss": 1 / step})
    for route in (f"/v1/tunings/{job_id}/checkpoints/", f"/v1/fine_tuning/jobs/{job_id}/checkpoints"):
        body = api_client.get(route, {"limit": 2}).json()
        assert [c["step_number"] for c in body["data"]] == [30, 20]
        assert body["has_more"] is True
        first = body["data"][0]
        assert first["object"] == "fine_tuning.job.checkpoint"
        assert first["fine_tuning_job_id"] == job_id
        assert first["fine_tuned_model_checkpoint"] == f"ft:tiny-llama:alice:bot:{job_id}:ckpt-step-30"
        assert first["metrics"] == {"train_loss": pytest.approx(1 / 30)}
        assert set(first) == {
            "object",
            "id",
            "created_at",
            "fine_tuned_model_checkpoint",
            "step_number",
            "metrics",
            "fine_tuning_job_id",
        }
        rest = api_client.get(route, {"after": body["last_id"]}).json()
        assert [c["step_number"] for c in rest["data"]] == [10]


def test_it_paginates_jobs_newest_first_without_gaps_or_repeats(api_client, create_job):
    ids = [create_job()["id"] for _ in range(5)]
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        body = api_client.get("/v1/fine_tuning/jobs", params).json()
        pages += 1
        seen += [job["id"] for job in body["data"]]
        assert body["first_id"] == body["data"][0]["id"]
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert pages == 3
    assert seen == list(reversed(ids))
    assert api_client.get("/v1/tunings.list").json()["data"][0]["id"] == ids[-1]


def test_it_defaults_to_twenty_items_and_caps_the_limit(api_client, create_job):
    for _ in range(21):
        create_job()
    body = api_client.get("/v1/fine_tuning/jobs").json()
    assert len(body["data"]) == 20
    assert body["has_more"] is True
    assert len(api_client.get("/v1/fine_tuning/jobs", {"limit": 100}).json()["data"]) == 21
    for bad in ("0", "101", "ten"):
        response = api_client.get("/v1/fine_tuning/jobs", {"limit": bad})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "limit"


def test_it_rejects_a_cursor_it_does_not_know(api_client, other_api_client, create_job):
    job_id = create_job()["id"]
    response = other_api_client.get("/v1/fine_tuning/jobs", {"after": job_id})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"
    assert response.json()["error"]["param"] == "after"


def test_it_filters_jobs_by_status_model_and_metadata(api_client, create_job, user, llama):
    from registry.models import BaseModel

    other_model = BaseModel.objects.create(name="other-llama", path="/models/other")
    a = create_job(metadata={"team": "search", "env": "prod"})["id"]
    b = create_job(metadata={"team": "ads"})["id"]
    c = create_job(model=other_model.name, training_file=make_file(user).id, metadata={"team": "search"})["id"]
    api_client.post(f"/v1/tunings/{b}/cancel")

    def ids(params):
        response = api_client.get("/v1/fine_tuning/jobs", params)
        assert response.status_code == 200, response.json()
        return {job["id"] for job in response.json()["data"]}

    assert ids({"status": "cancelled"}) == {b}
    assert ids({"status": "queued"}) == {a, c}
    assert ids({"status": "queued,cancelled"}) == {a, b, c}
    assert ids({"model": "other-llama"}) == {c}
    assert ids({"metadata[team]": "search"}) == {a, c}
    assert ids({"metadata[team]": "search", "metadata[env]": "prod"}) == {a}
    assert ids({"metadata_key": "team", "metadata_value": "ads"}) == {b}
    assert ids({"metadata[team]": "nobody"}) == set()
    assert ids({"metadata[team]": "search", "model": "tiny-llama", "status": "queued"}) == {a}

    response = api_client.get("/v1/fine_tuning/jobs", {"status": "done"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "status"
    response = api_client.get("/v1/fine_tuning/jobs", {"metadata_key": "team"})
    assert response.status_code == 400


def test_it_reports_queue_positions_by_priority_then_age(api_client, create_job, user, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "USER_MAX_PRIORITY": 5}  # let the API raise a job's priority
    first = create_job()["id"]
    second = create_job()["id"]
    urgent = create_job(priority=5)["id"]
    gpu = create_job(resources={"gpus": 1})["id"]

    def position(job_id):
        return api_client.get(f"/v1/tunings/{job_id}").json()["queue_position"]

    assert position(urgent) == 1
    assert position(first) == 2
    assert position(second) == 3
    assert position(gpu) == 1  # its own queue
    start(urgent)
    assert position(urgent) is None
    assert position(first) == 1


def test_it_estimates_the_start_of_queued_jobs_from_the_queues_history(api_client, create_job):
    from datetime import timedelta

    from django.utils import timezone

    from tunings.models import TuningJob

    first = create_job()["id"]
    second = create_job()["id"]
    assert api_client.get("/v1/tunings.get", {"job_id": first}).json()["estimated_start"] is None  # no history

    # One finished job of 100 s in the same queue: the next starts now, the one after ~100 s later.
    done = create_job()["id"]
    now = timezone.now()
    TuningJob.objects.filter(id=done).update(
        status="succeeded", started_at=now - timedelta(seconds=100), finished_at=now
    )
    first_start = api_client.get("/v1/tunings.get", {"job_id": first}).json()["estimated_start"]
    second_start = api_client.get(f"/v1/tunings/{second}").json()["estimated_start"]
    assert abs(first_start - now.timestamp()) < 5
    assert abs(second_start - first_start - 100) < 5
