"""tuning_job_retry / tuning_job_set_priority: the services behind the admin actions."""

from __future__ import annotations

import pytest

from tests.helpers import record_dispatches
from tuninglab import dispatch
from tuninglab.errors import ConflictError
from tunings.models import JobEvent, TuningJob
from tunings.services.retry import tuning_job_retry, tuning_job_set_priority

pytestmark = pytest.mark.django_db
S = TuningJob.Status


@pytest.fixture
def fake_dispatch(monkeypatch, settings):
    return record_dispatches(monkeypatch, settings)


def test_it_copies_the_request_queues_and_dispatches_after_commit(
    make_job, user, fake_dispatch, django_capture_on_commit_callbacks
):
    old = make_job(S.CANCELLED, queue="gpu", idempotency_key="idem-1", progress=40.0, current_step=8)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        new = tuning_job_retry(job=old, by=user)
        assert fake_dispatch == []  # nothing is sent before the transaction commits
    for callback in callbacks:
        callback()
    assert fake_dispatch == [(new.id, "gpu")]
    assert new.id != old.id and new.status == S.QUEUED
    for field in ("owner_id", "base_model_id", "training_file_id", "method", "hyperparameters", "lora_rank", "seed"):
        assert getattr(new, field) == getattr(old, field), field
    assert (new.suffix, new.metadata, new.priority, new.max_attempts) == ("demo", {"team": "nlp"}, 3, 2)
    # Run state starts fresh; the idempotency key stays with the original request.
    assert (new.progress, new.current_step, new.attempt, new.idempotency_key) == (0.0, 0, 0, None)
    assert JobEvent.objects.filter(job=old, data__retried_as=new.id).exists()
    assert JobEvent.objects.filter(job=new, data__retry_of=old.id).exists()


def test_it_keeps_the_job_queued_when_no_worker_can_be_reached(
    make_job, user, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # Embedded mode with no in-process worker registered: the message cannot be delivered.
    settings.TUNINGLAB_INPROCESS_WORKER = True
    monkeypatch.setattr(dispatch, "_local", None)
    with django_capture_on_commit_callbacks(execute=True):
        new = tuning_job_retry(job=make_job(S.FAILED), by=user)
    new.refresh_from_db()
    assert new.status == S.QUEUED


@pytest.mark.parametrize("status", [S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.SUCCEEDED])
def test_it_refuses_to_retry_a_job_that_is_not_failed_or_cancelled(make_job, status):
    job = make_job(status)
    with pytest.raises(ConflictError) as info:
        tuning_job_retry(job=job)
    assert info.value.code == "invalid_state"
    assert TuningJob.objects.count() == 1


def test_it_sets_priority_with_an_event_and_refuses_finished_jobs(make_job, user):
    job = make_job(S.QUEUED, priority=0)
    assert tuning_job_set_priority(job=job, priority=5, by=user).priority == 5
    event = JobEvent.objects.get(job=job, data__priority=5)
    assert event.data["previous_priority"] == 0 and "alice" in event.message
    with pytest.raises(ConflictError):
        tuning_job_set_priority(job=make_job(S.FAILED), priority=5)
