"""``Idempotency-Key`` on POST: replay, reuse with another body, errors not stored, concurrent duplicates."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.helpers import require_postgres
from tuninglab.models import IdempotencyRecord
from tunings.models import TuningJob

KEY = {"HTTP_IDEMPOTENCY_KEY": "create-job-1"}


@pytest.mark.django_db
def test_it_replays_the_first_answer_for_the_same_key_and_body(api_client, job_body, dispatched):
    first = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY)
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers

    # same body, keys in another order: still the same request
    reordered = dict(reversed(list(job_body.items())))
    second = api_client.post("/v1/fine_tuning/jobs", reordered, format="json", **KEY)
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert TuningJob.objects.count() == 1
    assert TuningJob.objects.get().idempotency_key == "create-job-1"


@pytest.mark.django_db
def test_it_refuses_the_same_key_with_another_body(api_client, job_body, dispatched):
    assert api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY).status_code == 200
    response = api_client.post("/v1/fine_tuning/jobs", {**job_body, "suffix": "other"}, format="json", **KEY)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["param"] == "Idempotency-Key"
    # another route with the same body is another request too
    response = api_client.post("/v1/tunings.create", job_body, format="json", **KEY)
    assert response.status_code == 422
    assert TuningJob.objects.count() == 1


@pytest.mark.django_db
def test_it_scopes_keys_per_owner(api_client, other_api_client, job_body, other_user, dispatched):
    from tests.tunings.apis.conftest import make_file

    mine = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY).json()
    theirs_body = {**job_body, "training_file": make_file(other_user).id}
    theirs = other_api_client.post("/v1/fine_tuning/jobs", theirs_body, format="json", **KEY)
    assert theirs.status_code == 200
    assert theirs.json()["id"] != mine["id"]
    assert TuningJob.objects.count() == 2


@pytest.mark.django_db
def test_it_does_not_store_errors_so_a_fixed_request_can_reuse_the_key(api_client, job_body, dispatched):
    bad = api_client.post("/v1/fine_tuning/jobs", {**job_body, "model": "nope"}, format="json", **KEY)
    assert bad.status_code == 400
    assert IdempotencyRecord.objects.count() == 0
    good = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY)
    assert good.status_code == 200
    assert IdempotencyRecord.objects.get().response_status == 200


@pytest.mark.django_db
def test_it_replays_a_cancel(api_client, create_job):
    job_id = create_job()["id"]
    first = api_client.post(f"/v1/tunings/{job_id}/cancel", HTTP_IDEMPOTENCY_KEY="cancel-1")
    again = api_client.post(f"/v1/tunings/{job_id}/cancel", HTTP_IDEMPOTENCY_KEY="cancel-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # without the key the second cancel is a real one, and the job is already finished
    assert api_client.post(f"/v1/tunings/{job_id}/cancel").status_code == 409


@pytest.mark.django_db
def test_it_expires_keys_after_a_day_but_never_creates_a_second_job_for_one(api_client, job_body, dispatched):
    first = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY).json()
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    # The record expired, but the job's own (owner, idempotency_key) constraint still binds the key.
    response = api_client.post("/v1/fine_tuning/jobs", {**job_body, "suffix": "new"}, format="json", **KEY)
    assert response.status_code == 422
    assert first["id"] in response.json()["error"]["message"]
    assert TuningJob.objects.count() == 1


@pytest.mark.django_db
def test_it_rejects_an_unusable_key(api_client, job_body, dispatched):
    response = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", HTTP_IDEMPOTENCY_KEY="x" * 256)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


@pytest.mark.django_db
def test_it_takes_over_a_record_abandoned_by_a_crashed_request(api_client, job_body, user, dispatched):
    IdempotencyRecord.objects.create(owner=user, key="create-job-1", method="POST", path="/x", request_hash="0" * 64)
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    response = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY)
    assert response.status_code == 200
    assert TuningJob.objects.count() == 1


def _post_json(url: str, api_key: str, body: dict, key: str) -> tuple[int, dict, bool]:
    """POST with urllib (no extra client dependency): (status, JSON body, replayed?)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return response.status, json.loads(response.read()), replayed
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), False


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_creates_exactly_one_job_for_20_concurrent_requests_with_one_key(
    live_server, api_client, job_body, dispatched, settings
):
    require_postgres()
    settings.TUNINGLAB_INPROCESS_WORKER = False
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}
    url = f"{live_server.url}/v1/fine_tuning/jobs"
    results: list[tuple[int, dict, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()  # release all 20 at once
        outcome = _post_json(url, api_client.raw_api_key, job_body, "concurrent-key")
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)

    assert len(results) == 20
    # A duplicate waits about a second for the first answer; one still waiting after that gets
    # 409 idempotency_request_in_progress (retry later) rather than holding a web worker.
    answered = [(body, replayed) for status, body, replayed in results if status == 200]
    busy = [body for status, body, _ in results if status != 200]
    assert all(body["error"]["code"] == "idempotency_request_in_progress" for body in busy), busy
    job_ids = {body["id"] for body, _ in answered}
    assert len(job_ids) == 1
    # one request ran, the others replayed its answer (or were told to retry)
    assert sorted(replayed for _, replayed in answered) == [False] + [True] * (len(answered) - 1)
    assert TuningJob.objects.count() == 1
    assert TuningJob.objects.get().id in job_ids
    assert IdempotencyRecord.objects.count() == 1
    assert len(dispatched) == 1  # one job, one task
