"""Sweeper (expired leases → re-queue → wake-up), dispatch and the in-process worker."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from tuninglab import dispatch
from tunings.models import TuningJob
from tunings.services.dispatch import dispatch_pending
from workers import inprocess
from workers.sweeper import sweep

from .conftest import REAL_DISPATCH, REAL_PENDING

Status = TuningJob.Status


@pytest.fixture
def sent(dispatched):
    return dispatched


@pytest.mark.django_db
def test_it_requeues_an_expired_lease_and_sends_a_wakeup(make_job, user, sent):
    job = make_job(user, status=Status.RUNNING, attempt=1, fencing_token=1)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    result = sweep()
    job.refresh_from_db()
    assert result.requeued == [job.id]
    assert (job.status, job.attempt, job.lease_owner) == (Status.QUEUED, 1, "")
    assert sent == [(job.id, "cpu")]
    # Nothing new on the next sweep: the wake-up is still pending.
    assert sweep().dispatched == 0


@pytest.mark.django_db
def test_it_fails_an_expired_job_past_the_attempt_cap(make_job, user, sent):
    job = make_job(user, status=Status.RUNNING, attempt=3, max_attempts=3, fencing_token=3)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert sweep().failed == [job.id]
    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert job.error["code"] == "max_attempts_exceeded"
    assert sent == []


@pytest.mark.django_db
def test_it_leaves_live_leases_alone(make_job, user, sent):
    job = make_job(user, status=Status.RUNNING, attempt=1, fencing_token=1)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() + timedelta(seconds=60))
    assert sweep().requeued == []
    job.refresh_from_db()
    assert job.status == Status.RUNNING


@pytest.mark.django_db
def test_it_wakes_only_as_many_jobs_as_can_start(make_job, user, other_user, sent, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_CONCURRENT_JOBS_PER_USER": 1}
    make_job(user, status=Status.RUNNING)
    make_job(user)  # blocked by alice's limit
    make_job(other_user)
    make_job(other_user)  # bob: only one slot
    assert dispatch_pending("cpu") == 1
    assert dispatch_pending("cpu") == 0


@pytest.mark.django_db
def test_it_survives_a_broker_that_is_down(make_job, user, settings, monkeypatch):
    monkeypatch.setattr(dispatch, "dispatch_tuning_job", REAL_DISPATCH)
    settings.TUNINGLAB_INPROCESS_WORKER = False

    def boom(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dispatch.app, "send_task", boom)
    job = make_job(user)
    dispatch.dispatch_tuning_job(job.id, "cpu")  # logs, does not raise
    job.refresh_from_db()
    assert job.status == Status.QUEUED


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_it_runs_a_dispatched_job_on_the_in_process_worker(make_job, user, fake_engine, settings, monkeypatch):
    monkeypatch.setattr(dispatch, "dispatch_tuning_job", REAL_DISPATCH)
    monkeypatch.setattr(dispatch, "pending_wakeups", REAL_PENDING)
    settings.TUNINGLAB_INPROCESS_WORKER = True
    fake_engine([{"emit": {"type": "message", "level": "info", "message": "hi"}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    try:
        dispatch.dispatch_tuning_job(job.id, "cpu")
        assert inprocess.wait_idle(timeout=45)
        deadline = time.monotonic() + 10
        while TuningJob.objects.get(id=job.id).status != Status.SUCCEEDED and time.monotonic() < deadline:
            time.sleep(0.1)
        job.refresh_from_db()
        assert job.status == Status.SUCCEEDED
        assert job.attempt == 1
    finally:
        inprocess.stop()
        connections.close_all()


# --- maintenance queue: the sweep and the registry sync never wait behind training ---------


def test_it_routes_the_beat_maintenance_tasks_to_their_own_queue():
    from tuninglab.celery import MAINTENANCE_QUEUE, QUEUE_NAMES, app
    from tuninglab.task_names import SWEEP_EXPIRED_LEASES, SYNC_REGISTRY

    assert MAINTENANCE_QUEUE not in QUEUE_NAMES  # dispatch_pending and eligibility loop over training queues only
    assert MAINTENANCE_QUEUE in {q.name for q in app.conf.task_queues}
    for name in (SWEEP_EXPIRED_LEASES, SYNC_REGISTRY):
        assert app.amqp.router.route({}, name)["queue"].name == MAINTENANCE_QUEUE
    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {SWEEP_EXPIRED_LEASES, SYNC_REGISTRY} <= tasks


def test_it_keeps_a_sweep_message_alive_longer_than_one_period():
    from tuninglab.celery import REGISTRY_SYNC_SECONDS, SWEEP_SECONDS, app

    expires = app.conf.beat_schedule["sweep-expired-leases"]["options"]["expires"]
    # A sweep queued behind a registry sync (or a slow sweep) must still run afterwards.
    assert expires > SWEEP_SECONDS
    assert expires >= 60
    assert expires <= max(REGISTRY_SYNC_SECONDS, 60 * SWEEP_SECONDS)
