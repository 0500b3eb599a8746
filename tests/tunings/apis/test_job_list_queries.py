"""Listing jobs, events and checkpoints costs a bounded number of queries, whatever the page size."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.tunings.apis.conftest import make_file
from tunings.models import Checkpoint, JobEvent, TuningJob
from tunings.selectors.jobs import tuning_job_queue_info
from tunings.selectors.queue import queued_jobs
from tunings.serializers.jobs import job_to_dict

pytestmark = pytest.mark.django_db

Status = TuningJob.Status
# Measured: the API key (1, after a warm-up request did the once-a-minute last-used touch), the page
# (1), then queue info for the page: queued ids in claim order (1), running ETAs (1), typical duration
# (1 per queue on the page, 2 here). Any per-row query would make the 100-job page cost more.
MAX_JOB_LIST_QUERIES = 6
# The API key, the job (owner and base model joined), the page; checkpoints add the job's
# checkpoint paths (one query) to list only those whose files still exist.
MAX_CHILD_LIST_QUERIES = 4


def _mix(index: int) -> dict:
    """The index-th job of a repeating mix: every 10 consecutive jobs hold each kind at least once."""
    now = timezone.now()
    kinds = [
        {"status": Status.QUEUED, "queue": "cpu", "priority": index % 3},
        {"status": Status.QUEUED, "queue": "gpu", "priority": index % 2},
        {"status": Status.QUEUED, "queue": "cpu", "cancel_requested": True},
        {"status": Status.RUNNING, "queue": "cpu", "eta_seconds": 30.0 + index, "started_at": now},
        {"status": Status.RUNNING, "queue": "gpu", "eta_seconds": None, "started_at": now},
        {
            "status": Status.SUCCEEDED,
            "queue": "cpu",
            "started_at": now - timedelta(seconds=300 + index),
            "finished_at": now - timedelta(seconds=index),
        },
        {
            "status": Status.SUCCEEDED,
            "queue": "gpu",
            "started_at": now - timedelta(seconds=900),
            "finished_at": now - timedelta(seconds=index),
        },
        {"status": Status.QUEUED, "queue": "cpu", "priority": 5},
        {"status": Status.QUEUED, "queue": "gpu"},
        {"status": Status.FAILED, "queue": "cpu"},
    ]
    return kinds[index % len(kinds)]


@pytest.fixture
def make_jobs(user, llama):
    training = make_file(user)

    def _make(count: int) -> list[TuningJob]:
        jobs = [
            TuningJob(owner=user, base_model=llama, training_file=training, **_mix(index)) for index in range(count)
        ]
        return TuningJob.objects.bulk_create(jobs)

    return _make


def _count_queries(client, url: str, params: dict | None = None) -> tuple[int, dict, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params or {})
    assert response.status_code == 200, response.json()
    return len(captured), response.json(), [q["sql"] for q in captured.captured_queries]


def test_it_lists_10_and_100_jobs_with_the_same_bounded_number_of_queries(api_client, make_jobs):
    make_jobs(100)
    api_client.get("/v1/fine_tuning/jobs")  # warm up: the API key's last-used touch happens once a minute
    for route in ("/v1/fine_tuning/jobs", "/v1/tunings.list"):
        small, small_body, small_sql = _count_queries(api_client, route, {"limit": 10})
        large, large_body, large_sql = _count_queries(api_client, route, {"limit": 100})
        assert len(small_body["data"]) == 10
        assert len(large_body["data"]) == 100
        assert small == large, "\n".join([*small_sql, "--- vs ---", *large_sql])
        assert large <= MAX_JOB_LIST_QUERIES, "\n".join(large_sql)


def test_it_pages_on_with_a_cursor_at_the_same_cost(api_client, make_jobs):
    make_jobs(60)
    first = api_client.get("/v1/fine_tuning/jobs", {"limit": 10}).json()
    small, _, _ = _count_queries(api_client, "/v1/fine_tuning/jobs", {"limit": 10, "after": first["last_id"]})
    large, body, sql = _count_queries(api_client, "/v1/fine_tuning/jobs", {"limit": 50, "after": first["last_id"]})
    assert len(body["data"]) == 50
    assert small == large, "\n".join(sql)
    assert large <= MAX_JOB_LIST_QUERIES + 1, "\n".join(sql)  # + the cursor row


NOW_RELATIVE = ("estimated_start", "estimated_finish")


def _without(body: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in body.items() if k not in keys}


def test_it_lists_the_queue_positions_and_estimates_of_the_detail_route(api_client, make_jobs):
    make_jobs(40)
    listed = api_client.get("/v1/fine_tuning/jobs", {"limit": 100}).json()["data"]
    assert len(listed) == 40
    for job in listed:
        detail = api_client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        assert job["queue_position"] == detail["queue_position"], job["id"]
        # "now + offset" values, read a moment apart: equal to the second, give or take one.
        for key in NOW_RELATIVE:
            assert (job[key] is None) == (detail[key] is None), (job["id"], key)
            assert abs((job[key] or 0) - (detail[key] or 0)) <= 1, (job["id"], key)
        assert _without(job, NOW_RELATIVE) == _without(detail, NOW_RELATIVE)


def test_it_numbers_each_queue_in_claim_order(api_client, make_jobs):
    make_jobs(40)
    listed = {job["id"]: job for job in api_client.get("/v1/fine_tuning/jobs", {"limit": 100}).json()["data"]}
    for queue in ("cpu", "gpu"):
        claim_order = list(queued_jobs(queue).values_list("id", flat=True))
        assert claim_order, queue
        assert [listed[job_id]["queue_position"] for job_id in claim_order] == list(range(1, len(claim_order) + 1))
        starts = [listed[job_id]["estimated_start"] for job_id in claim_order]
        assert all(start is not None for start in starts) and starts == sorted(starts), queue
    not_queued = [job for job in listed.values() if job["status"] != "queued" or job["cancel_requested"]]
    assert not_queued
    assert all(job["queue_position"] is None and job["estimated_start"] is None for job in not_queued)


def test_it_serializes_a_job_without_querying(make_jobs, django_assert_num_queries):
    make_jobs(10)
    jobs = list(TuningJob.objects.select_related("owner", "base_model").order_by("created_at", "id"))
    info = tuning_job_queue_info(jobs=jobs)
    with django_assert_num_queries(0):
        for job in jobs:
            job_to_dict(job, queue_info=info[job.id])


def _job_with_children(user, llama, count: int) -> TuningJob:
    job = TuningJob.objects.create(
        owner=user, base_model=llama, training_file=make_file(user), status=Status.RUNNING, suffix="q"
    )
    JobEvent.objects.bulk_create(JobEvent(job=job, seq=seq, message=f"step {seq}") for seq in range(count))
    Checkpoint.objects.bulk_create(
        Checkpoint(job=job, step=step, metrics={"loss": 1.0 / (step + 1)}, path=f"ckpt/{step}") for step in range(count)
    )
    for step in range(count):  # the list shows only checkpoints whose files still exist
        (Path(settings.DATA_DIR) / "ckpt" / str(step)).mkdir(parents=True)
    return job


@pytest.mark.parametrize("child", ["events", "checkpoints"])
def test_it_lists_10_and_100_events_or_checkpoints_with_the_same_queries(api_client, user, llama, child):
    job = _job_with_children(user, llama, 100)
    api_client.get(f"/v1/fine_tuning/jobs/{job.id}/{child}")  # warm up the API key's last-used touch
    for prefix in ("/v1/fine_tuning/jobs", "/v1/tunings"):
        url = f"{prefix}/{job.id}/{child}"
        small, small_body, _ = _count_queries(api_client, url, {"limit": 10})
        large, large_body, sql = _count_queries(api_client, url, {"limit": 100})
        assert (len(small_body["data"]), len(large_body["data"])) == (10, 100)
        assert small == large, "\n".join(sql)
        assert large <= MAX_CHILD_LIST_QUERIES, "\n".join(sql)
    checkpoints = api_client.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints", {"limit": 1}).json()["data"]
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == f"ft:tiny-llama:alice:q:{job.id}:ckpt-step-99"
