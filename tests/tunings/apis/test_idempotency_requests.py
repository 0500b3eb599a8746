"""``Idempotency-Key``: the query string is part of the request, and a duplicate never waits long."""

from __future__ import annotations

import time

import pytest

from tuninglab.models import IdempotencyRecord
from tunings.models import TuningJob

KEY = {"HTTP_IDEMPOTENCY_KEY": "create-job-q"}


@pytest.mark.django_db
def test_it_treats_another_query_string_as_another_request(api_client, job_body, dispatched):
    first = api_client.post("/v1/fine_tuning/jobs?purpose=a", job_body, format="json", **KEY)
    assert first.status_code == 200

    same = api_client.post("/v1/fine_tuning/jobs?purpose=a", job_body, format="json", **KEY)
    assert same.status_code == 200
    assert same.headers["Idempotent-Replayed"] == "true"
    assert same.json() == first.json()

    for query in ("?purpose=b", ""):
        other = api_client.post(f"/v1/fine_tuning/jobs{query}", job_body, format="json", **KEY)
        assert other.status_code == 422, query
        assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert TuningJob.objects.count() == 1


@pytest.mark.django_db
def test_it_answers_a_duplicate_of_a_request_in_flight_at_once_with_retry_after(api_client, job_body, dispatched):
    first = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY)
    assert first.status_code == 200
    # Hold the key as a first request still running would: the record is back to "in progress".
    IdempotencyRecord.objects.update(response_status=None, response_body=None)

    started = time.monotonic()
    duplicate = api_client.post("/v1/fine_tuning/jobs", job_body, format="json", **KEY)
    elapsed = time.monotonic() - started

    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "idempotency_request_in_progress"
    assert duplicate.json()["error"]["param"] == "Idempotency-Key"
    assert int(duplicate.headers["Retry-After"]) >= 1
    assert elapsed < 3, f"the duplicate held a worker for {elapsed:.1f}s"
    assert TuningJob.objects.count() == 1
