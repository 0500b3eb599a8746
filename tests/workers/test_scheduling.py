"""Priority order, the per-user concurrency limit, queue position and the start estimate."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tunings.models import TuningJob
from tunings.selectors.jobs import tuning_job_estimated_start, tuning_job_queue_position
from tunings.selectors.queue import eligible_count
from workers.scheduling import claim_next_job

pytestmark = pytest.mark.django_db

Status = TuningJob.Status


@pytest.fixture
def limit_one(settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_CONCURRENT_JOBS_PER_USER": 1}


def test_it_claims_the_highest_priority_then_the_oldest_job(make_job, user, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_CONCURRENT_JOBS_PER_USER": 10}
    low = make_job(user, priority=0)
    high = make_job(user, priority=5)
    high_later = make_job(user, priority=5)
    claimed = [claim_next_job(worker_id=f"w{i}", queue="cpu") for i in range(4)]
    assert [j.id if j else None for j in claimed[:3]] == [high.id, high_later.id, low.id]
    assert claimed[3] is None


def test_it_skips_owners_at_their_limit_and_leaves_their_jobs_queued(make_job, user, other_user, limit_one):
    make_job(user, status=Status.RUNNING)
    blocked = make_job(user, priority=10)
    other = make_job(other_user, priority=0)
    assert eligible_count("cpu") == 1

    job = claim_next_job(worker_id="w1", queue="cpu")
    assert job.id == other.id
    assert claim_next_job(worker_id="w2", queue="cpu") is None
    blocked.refresh_from_db()
    assert (blocked.status, blocked.attempt) == (Status.QUEUED, 0)


def test_it_claims_the_blocked_job_once_its_owner_has_a_free_slot(make_job, user, limit_one):
    running = make_job(user, status=Status.RUNNING)
    blocked = make_job(user)
    assert claim_next_job(worker_id="w1", queue="cpu") is None
    TuningJob.objects.filter(id=running.id).update(status=Status.SUCCEEDED)
    assert claim_next_job(worker_id="w1", queue="cpu").id == blocked.id


def test_it_never_claims_cancelled_jobs_or_other_queues(make_job, user):
    make_job(user, status=Status.CANCELLED, cancel_requested=True)
    make_job(user, queue="gpu")
    assert claim_next_job(worker_id="w1", queue="cpu") is None
    assert claim_next_job(worker_id="w1", queue="gpu").queue == "gpu"


def test_it_fails_a_queued_job_with_no_attempts_left(make_job, user):
    spent = make_job(user, attempt=3, max_attempts=3, priority=9)
    fresh = make_job(user)
    assert claim_next_job(worker_id="w1", queue="cpu").id == fresh.id
    spent.refresh_from_db()
    assert spent.status == Status.FAILED
    assert spent.error["code"] == "max_attempts_exceeded"


def test_it_reports_queue_positions_in_claim_order(make_job, user, other_user):
    a = make_job(user, priority=0)
    b = make_job(other_user, priority=3)
    c = make_job(user, priority=0)
    gpu = make_job(user, queue="gpu")
    assert [tuning_job_queue_position(job=j) for j in (b, a, c)] == [1, 2, 3]
    assert tuning_job_queue_position(job=gpu) == 1
    claim_next_job(worker_id="w1", queue="cpu")  # takes b
    b.refresh_from_db()
    assert tuning_job_queue_position(job=b) is None
    assert [tuning_job_queue_position(job=j) for j in (a, c)] == [1, 2]


def test_it_estimates_a_start_from_running_etas_and_past_durations(make_job, user):
    now = timezone.now()
    done = make_job(user, status=Status.SUCCEEDED)
    TuningJob.objects.filter(id=done.id).update(
        started_at=now - timedelta(seconds=700), finished_at=now - timedelta(seconds=100)
    )
    make_job(user, status=Status.RUNNING, eta_seconds=60.0)
    first = make_job(user)
    second = make_job(user)
    # One busy slot frees in 60 s; then each job ahead takes the typical 600 s.
    assert abs((tuning_job_estimated_start(job=first) - now).total_seconds() - 60) < 5
    assert abs((tuning_job_estimated_start(job=second) - now).total_seconds() - 660) < 5
    assert tuning_job_estimated_start(job=done) is None


def test_it_has_no_estimate_without_any_history(make_job, user):
    assert tuning_job_estimated_start(job=make_job(user)) is None


def test_it_starts_another_owners_job_behind_a_long_queue_of_a_saturated_owner(make_job, user, other_user, settings):
    limit = settings.TUNINGLAB["MAX_CONCURRENT_JOBS_PER_USER"]
    first = make_job(user, status=Status.RUNNING)
    for _ in range(limit - 1):
        make_job(user, status=Status.RUNNING, training_file=first.training_file)
    template = make_job(user, priority=100, training_file=first.training_file)
    TuningJob.objects.bulk_create(
        TuningJob(
            owner=user,
            base_model=template.base_model,
            training_file=template.training_file,
            priority=100,
            resolved_hyperparameters=template.resolved_hyperparameters,
            status=Status.QUEUED,
        )
        for _ in range(249)
    )
    waiting = make_job(other_user, priority=0)
    assert eligible_count("cpu") == 1

    job = claim_next_job(worker_id="w1", queue="cpu")

    assert job is not None and job.id == waiting.id
    assert TuningJob.objects.filter(owner=user, status=Status.QUEUED).count() == 250
