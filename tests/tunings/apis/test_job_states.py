"""The job state machine (``tunings.services.state``): every legal transition and the illegal ones.

These go through the services directly (the worker's side has no HTTP route); the cancel
cases are also checked over HTTP in test_jobs_routes.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tuninglab.errors import ConflictError
from tunings.models import JobEvent, TuningJob
from tunings.services import state

pytestmark = pytest.mark.django_db

S = TuningJob.Status


@pytest.fixture
def new_job(user, llama, training_file):
    """A job as created, before the files check moved it on (``validating_files``)."""

    def _make(**fields):
        return TuningJob.objects.create(owner=user, base_model=llama, training_file=training_file, **fields)

    return _make


def queued(new_job, **fields) -> TuningJob:
    return state.tuning_job_queue(job=new_job(**fields))


def running(new_job, **fields) -> TuningJob:
    job = queued(new_job, **fields)
    claimed = state.tuning_job_claim(job_id=job.id, worker_id="w1")
    assert claimed is not None
    return claimed


def last_event(job: TuningJob) -> JobEvent:
    return JobEvent.objects.filter(job_id=job.id).order_by("-seq").first()


def test_it_queues_a_validated_job_once(new_job):
    job = state.tuning_job_queue(job=new_job())
    assert job.status == S.QUEUED
    assert last_event(job).data == {"status": "queued"}
    with pytest.raises(ConflictError) as error:
        state.tuning_job_queue(job=job)
    assert error.value.code == "invalid_state"
    assert error.value.status == 409


def test_it_claims_a_queued_job_for_exactly_one_worker(new_job):
    job = queued(new_job)
    claimed = state.tuning_job_claim(job_id=job.id, worker_id="w1")
    assert claimed.status == S.RUNNING
    assert claimed.attempt == 1
    assert claimed.fencing_token == 1
    assert claimed.lease_owner == "w1"
    assert claimed.lease_until > timezone.now()
    assert claimed.started_at is not None
    # a duplicate / redelivered message is a no-op
    assert state.tuning_job_claim(job_id=job.id, worker_id="w2") is None
    assert TuningJob.objects.get(id=job.id).lease_owner == "w1"


def test_it_does_not_claim_a_job_that_is_not_queued(new_job):
    assert state.tuning_job_claim(job_id=new_job().id, worker_id="w1") is None  # validating_files


def test_it_renews_the_lease_only_for_the_current_attempt(new_job):
    job = running(new_job)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() + timedelta(seconds=1))
    assert state.tuning_job_renew_lease(job_id=job.id, token=job.fencing_token) is True
    assert TuningJob.objects.get(id=job.id).lease_until > timezone.now() + timedelta(seconds=30)
    assert state.tuning_job_renew_lease(job_id=job.id, token=job.fencing_token + 1) is False


def test_it_records_progress_only_for_the_current_attempt(new_job):
    job = running(new_job)
    assert state.tuning_job_record_progress(
        job_id=job.id, token=job.fencing_token, fields={"progress": 40.0, "current_loss": 1.5}
    )
    assert not state.tuning_job_record_progress(job_id=job.id, token=99, fields={"progress": 90.0})
    job.refresh_from_db()
    assert (job.progress, job.current_loss) == (40.0, 1.5)


def test_it_succeeds_a_running_job(new_job):
    job = running(new_job)
    assert state.tuning_job_succeed(job_id=job.id, token=job.fencing_token, fine_tuned_model="ft:x", fields={})
    job.refresh_from_db()
    assert job.status == S.SUCCEEDED
    assert job.progress == 100.0
    assert job.fine_tuned_model == "ft:x"
    assert job.finished_at is not None
    # a stale attempt cannot succeed it again
    assert not state.tuning_job_succeed(job_id=job.id, token=job.fencing_token, fine_tuned_model="ft:y")


def test_it_does_not_succeed_a_queued_job(new_job):
    job = queued(new_job)
    assert not state.tuning_job_succeed(job_id=job.id, token=0, fine_tuned_model="ft:x")
    assert TuningJob.objects.get(id=job.id).status == S.QUEUED


def test_it_fails_a_running_job_with_error_and_suggestion(new_job):
    job = running(new_job)
    assert state.tuning_job_fail(
        job_id=job.id,
        token=job.fencing_token,
        code="out_of_memory",
        message="CUDA out of memory",
        param="batch_size",
        suggestion="lower batch_size or rank",
    )
    job.refresh_from_db()
    assert job.status == S.FAILED
    assert job.error == {"code": "out_of_memory", "message": "CUDA out of memory", "param": "batch_size"}
    assert job.suggestion == "lower batch_size or rank"
    assert last_event(job).level == "error"


def test_it_fails_a_job_from_validating_files_and_queued_without_a_token(new_job):
    for job in (new_job(), queued(new_job)):
        assert state.tuning_job_fail(job_id=job.id, code="invalid_training_data", message="bad line 3")
        assert TuningJob.objects.get(id=job.id).status == S.FAILED


def test_it_lets_only_the_owning_attempt_fail_a_running_job(new_job):
    job = running(new_job)
    assert not state.tuning_job_fail(job_id=job.id, token=job.fencing_token + 1, code="x", message="stale")
    assert TuningJob.objects.get(id=job.id).status == S.RUNNING


@pytest.mark.parametrize("make", [lambda f: f(), lambda f: queued(f)], ids=["validating_files", "queued"])
def test_it_cancels_a_job_that_has_not_started_at_once(new_job, make, user):
    job = state.tuning_job_cancel(job=make(new_job), by=user)
    assert job.status == S.CANCELLED
    assert job.cancel_requested is True
    assert job.finished_at is not None
    assert "cancelled by alice" in last_event(job).message
    assert state.tuning_job_claim(job_id=job.id, worker_id="w1") is None


def test_it_cancels_a_running_job_in_two_steps(new_job, user):
    job = running(new_job)
    job = state.tuning_job_cancel(job=job, by=user)
    assert job.status == S.RUNNING
    assert job.cancel_requested is True
    # the worker stopped the child: running → cancelled, only with the current token
    assert not state.tuning_job_mark_cancelled(job_id=job.id, token=job.fencing_token + 1)
    assert state.tuning_job_mark_cancelled(job_id=job.id, token=job.fencing_token)
    job.refresh_from_db()
    assert job.status == S.CANCELLED
    assert job.finished_at is not None


def test_it_does_not_mark_cancelled_without_a_cancel_request(new_job):
    job = running(new_job)
    assert not state.tuning_job_mark_cancelled(job_id=job.id, token=job.fencing_token)
    assert TuningJob.objects.get(id=job.id).status == S.RUNNING


def _to_terminal(new_job, status):
    job = running(new_job)
    if status == S.SUCCEEDED:
        state.tuning_job_succeed(job_id=job.id, token=job.fencing_token, fine_tuned_model="ft:x")
    elif status == S.FAILED:
        state.tuning_job_fail(job_id=job.id, token=job.fencing_token, code="nan_detected", message="NaN")
    else:
        state.tuning_job_cancel(job=job)
        state.tuning_job_mark_cancelled(job_id=job.id, token=job.fencing_token)
    job.refresh_from_db()
    assert job.status == status
    return job


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
def test_it_refuses_every_transition_out_of_a_terminal_state(new_job, status):
    job = _to_terminal(new_job, status)
    with pytest.raises(ConflictError) as error:
        state.tuning_job_cancel(job=job)
    assert error.value.status == 409
    assert error.value.code == "invalid_state"
    assert status in error.value.message
    with pytest.raises(ConflictError):
        state.tuning_job_queue(job=job)
    assert state.tuning_job_claim(job_id=job.id, worker_id="w2") is None
    assert not state.tuning_job_fail(job_id=job.id, code="x", message="late")
    assert not state.tuning_job_succeed(job_id=job.id, token=job.fencing_token, fine_tuned_model="ft:late")
    assert not state.tuning_job_renew_lease(job_id=job.id, token=job.fencing_token)
    assert TuningJob.objects.get(id=job.id).status == status


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
def test_it_answers_409_when_cancelling_a_terminal_job_over_http(api_client, new_job, status):
    job = _to_terminal(new_job, status)
    response = api_client.post(f"/v1/fine_tuning/jobs/{job.id}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"


def test_it_requeues_a_running_job_whose_lease_expired(new_job):
    job = running(new_job, max_attempts=3)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    requeued, failed = state.tuning_job_requeue_expired()
    assert (requeued, failed) == ([job.id], [])
    job.refresh_from_db()
    assert job.status == S.QUEUED
    assert job.lease_owner == ""
    assert last_event(job).level == "warning"
    # the next claim is attempt 2 with a new fencing token; the old attempt can no longer write
    claimed = state.tuning_job_claim(job_id=job.id, worker_id="w2")
    assert (claimed.attempt, claimed.fencing_token) == (2, 2)
    assert not state.tuning_job_record_progress(job_id=job.id, token=1, fields={"progress": 99.0})


def test_it_leaves_a_job_with_a_live_lease_alone(new_job):
    job = running(new_job)
    assert state.tuning_job_requeue_expired() == ([], [])
    assert TuningJob.objects.get(id=job.id).status == S.RUNNING


def test_it_fails_a_job_past_max_attempts(new_job):
    job = running(new_job, max_attempts=1)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    requeued, failed = state.tuning_job_requeue_expired()
    assert (requeued, failed) == ([], [job.id])
    job.refresh_from_db()
    assert job.status == S.FAILED
    assert job.error["code"] == "max_attempts_exceeded"
    assert job.suggestion


def test_it_cancels_a_cancel_requested_job_whose_lease_expired(new_job):
    job = running(new_job)
    state.tuning_job_cancel(job=job)
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert state.tuning_job_requeue_expired() == ([], [])
    assert TuningJob.objects.get(id=job.id).status == S.CANCELLED


def test_it_shows_a_failed_job_with_error_and_suggestion_over_http(api_client, new_job):
    job = running(new_job)
    state.tuning_job_fail(
        job_id=job.id,
        token=job.fencing_token,
        code="out_of_memory",
        message="out of memory at step 3",
        param="batch_size",
        suggestion="lower batch_size or rank, or enable gradient checkpointing / QLoRA",
    )
    body = api_client.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"code": "out_of_memory", "message": "out of memory at step 3", "param": "batch_size"}
    assert body["suggestion"].startswith("lower batch_size")
    assert isinstance(body["finished_at"], int)
