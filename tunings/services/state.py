"""The job state machine: every transition is a guarded, conditional UPDATE plus a JobEvent.

``validating_files → queued → running → succeeded | failed | cancelled``, and
``running → queued`` only when a lease expired with attempts left. Each function checks the
current state *in the UPDATE's WHERE clause*, so two racing callers cannot both win: the
loser sees ``rowcount == 0``. Worker-side writes also carry the job's fencing token, so a
worker that lost its lease (and maybe does not know it yet) writes nothing.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tuninglab.errors import ConflictError
from tunings.models import Checkpoint, JobEvent, TuningJob

Status = TuningJob.Status
NON_TERMINAL = (Status.VALIDATING_FILES, Status.QUEUED, Status.RUNNING)


def job_event_add(
    *,
    job_id: str,
    message: str = "",
    level: str = JobEvent.Level.INFO,
    type: str = JobEvent.Type.MESSAGE,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to a job's log. ``seq`` orders events written within one clock tick."""
    return JobEvent.objects.create(
        job_id=job_id, message=message, level=level, type=type, data=data, seq=time.time_ns()
    )


def _lease_deadline() -> Any:
    return timezone.now() + timedelta(seconds=settings.TUNINGLAB["LEASE_SECONDS"])


def _illegal(job_id: str, action: str) -> ConflictError:
    current = TuningJob.objects.filter(id=job_id).values_list("status", flat=True).first()
    return ConflictError(
        f"Cannot {action} job {job_id}: it is {current}.",
        code="invalid_state",
        param="job_id",
    )


def tuning_job_queue(*, job: TuningJob) -> TuningJob:
    """validating_files → queued (files are valid). Raises ConflictError from any other state."""
    updated = TuningJob.objects.filter(id=job.id, status=Status.VALIDATING_FILES, cancel_requested=False).update(
        status=Status.QUEUED, updated_at=timezone.now()
    )
    if updated != 1:
        raise _illegal(job.id, "queue")
    job_event_add(job_id=job.id, message="Files validated; job queued.", data={"status": Status.QUEUED})
    job.refresh_from_db()
    return job


def tuning_job_claim(*, job_id: str, worker_id: str) -> TuningJob | None:
    """queued → running for exactly one caller; None for a duplicate or redelivered message.

    The conditional UPDATE is the lock: a second worker holding the same message finds the
    row no longer ``queued`` and returns without touching it.
    """
    now = timezone.now()
    updated = TuningJob.objects.filter(
        id=job_id, status=Status.QUEUED, cancel_requested=False, attempt__lt=F("max_attempts")
    ).update(
        status=Status.RUNNING,
        attempt=F("attempt") + 1,
        fencing_token=F("fencing_token") + 1,
        lease_owner=worker_id,
        lease_until=_lease_deadline(),
        updated_at=now,
    )
    if updated != 1:
        return None
    TuningJob.objects.filter(id=job_id, started_at__isnull=True).update(started_at=now)
    job = TuningJob.objects.get(id=job_id)
    job_event_add(
        job_id=job_id,
        message=f"Attempt {job.attempt} started.",  # the worker is in data: for operators, not the tenant
        data={"status": Status.RUNNING, "attempt": job.attempt, "worker": worker_id},
    )
    return job


def _running_with_token(job_id: str, token: int) -> Any:
    return TuningJob.objects.filter(id=job_id, status=Status.RUNNING, fencing_token=token)


def tuning_job_renew_lease(*, job_id: str, token: int) -> bool:
    """Extend the lease of the attempt holding ``token``; False means the attempt lost the job."""
    return _running_with_token(job_id, token).update(lease_until=_lease_deadline()) == 1


def tuning_job_record_progress(*, job_id: str, token: int, fields: dict[str, Any]) -> bool:
    """Write progress fields (progress, current_loss, ...) if this attempt still owns the job."""
    return _running_with_token(job_id, token).update(**fields, updated_at=timezone.now()) == 1


def checkpoint_record(*, job_id: str, step: int, path: str, metrics: dict[str, Any] | None = None) -> bool:
    """Record the complete checkpoint the engine wrote at ``step``; False when it was recorded already.

    A resumed attempt may report a step an earlier attempt reported (the engine re-announces
    the checkpoint it resumed from), so the row is per (job, step) and the event is written once.
    Call it inside the attempt's fenced transaction.
    """
    _, created = Checkpoint.objects.get_or_create(
        job_id=job_id, step=step, defaults={"path": path, "metrics": metrics or {}}
    )
    if created:
        job_event_add(job_id=job_id, message=f"Checkpoint saved at step {step}.", data={"step": step, "path": path})
    return created


def tuning_job_release_lease(*, job_id: str, token: int, data: dict[str, Any] | None = None) -> bool:
    """Give up a running attempt's lease so the sweeper re-queues the job (it resumes from its checkpoint).

    For a child that stopped without a cancel request (a SIGTERM from outside, e.g. a host
    shutdown): the attempt is over but the job is not. False when the attempt no longer owns the job.
    """
    released = _running_with_token(job_id, token).update(
        lease_until=timezone.now() - timedelta(seconds=1), updated_at=timezone.now()
    )
    if released == 1:
        job_event_add(
            job_id=job_id,
            level=JobEvent.Level.WARNING,
            message="The training process stopped without a cancel request; re-queueing to resume.",
            data=data,
        )
    return released == 1


def tuning_job_succeed(*, job_id: str, token: int, fine_tuned_model: str, fields: dict[str, Any] | None = None) -> bool:
    """running → succeeded, only for the attempt holding ``token``."""
    updated = _running_with_token(job_id, token).update(
        status=Status.SUCCEEDED,
        fine_tuned_model=fine_tuned_model,
        progress=100.0,
        eta_seconds=0.0,
        finished_at=timezone.now(),
        lease_until=None,
        **(fields or {}),
    )
    if updated == 1:
        job_event_add(
            job_id=job_id,
            message=f"Job succeeded: {fine_tuned_model}.",
            data={"status": Status.SUCCEEDED, "fine_tuned_model": fine_tuned_model},
        )
    return updated == 1


def tuning_job_fail(
    *,
    job_id: str,
    code: str,
    message: str,
    param: str | None = None,
    suggestion: str = "",
    token: int | None = None,
    lease_expired_before: Any = None,
) -> bool:
    """Any non-terminal state → failed with ``error = {code, message, param}`` and a suggestion.

    With ``token`` only the running attempt holding it may be failed (the worker, the sweeper);
    without it (validation) any non-terminal job may be failed. With ``lease_expired_before``
    (the sweeper) the lease must also still be expired at that time: a heartbeat that renewed
    it after the sweeper read the row keeps its job.
    """
    query = (
        _running_with_token(job_id, token)
        if token is not None
        else TuningJob.objects.filter(id=job_id, status__in=NON_TERMINAL)
    )
    if lease_expired_before is not None:
        query = query.filter(lease_until__lt=lease_expired_before)
    updated = query.update(
        status=Status.FAILED,
        error={"code": code, "message": message, "param": param},
        suggestion=suggestion,
        finished_at=timezone.now(),
        lease_until=None,
        eta_seconds=None,
    )
    if updated == 1:
        job_event_add(
            job_id=job_id,
            level=JobEvent.Level.ERROR,
            message=f"Job failed: {message}",
            data={"status": Status.FAILED, "code": code, "param": param, "suggestion": suggestion},
        )
    return updated == 1


def tuning_job_cancel(*, job: TuningJob, by: Any = None) -> TuningJob:
    """Cancel from any non-terminal state; 409 (ConflictError) from a terminal one.

    A job that has not started is cancelled at once (it will never be claimed: the claim
    requires ``queued``). A running job gets ``cancel_requested``; its worker stops the child
    at the next step boundary and calls ``tuning_job_mark_cancelled``.
    """
    now = timezone.now()
    who = getattr(by, "username", None) or "system"
    with transaction.atomic():
        not_started = TuningJob.objects.filter(id=job.id, status__in=(Status.VALIDATING_FILES, Status.QUEUED)).update(
            status=Status.CANCELLED, cancel_requested=True, finished_at=now, eta_seconds=None, updated_at=now
        )
        if not_started == 1:
            job_event_add(job_id=job.id, message=f"Job cancelled by {who}.", data={"status": Status.CANCELLED})
        else:
            requested = TuningJob.objects.filter(id=job.id, status=Status.RUNNING).update(
                cancel_requested=True, updated_at=now
            )
            if requested != 1:
                raise _illegal(job.id, "cancel")
            job_event_add(job_id=job.id, message=f"Cancellation requested by {who}; stopping at the next step.")
    job.refresh_from_db()
    return job


def tuning_job_mark_cancelled(*, job_id: str, token: int) -> bool:
    """running (cancel requested) → cancelled, called by the worker once the child stopped."""
    updated = (
        _running_with_token(job_id, token)
        .filter(cancel_requested=True)
        .update(status=Status.CANCELLED, finished_at=timezone.now(), lease_until=None, eta_seconds=None)
    )
    if updated == 1:
        job_event_add(job_id=job_id, message="Job cancelled; last checkpoint kept.", data={"status": Status.CANCELLED})
    return updated == 1


def tuning_job_requeue_expired(*, now: Any = None) -> tuple[list[str], list[str]]:
    """The sweeper's transition: running jobs whose lease expired go back to queued, or fail
    when no attempts are left. Returns (requeued ids, failed ids)."""
    now = now or timezone.now()
    requeued: list[str] = []
    failed: list[str] = []
    # Longest expired first. Each row is read, then changed by its own conditional UPDATE: the
    # lease may be renewed in between (a worker whose database blip just ended), so every
    # branch re-checks token *and* expiry in its WHERE clause.
    expired = (
        TuningJob.objects.filter(status=Status.RUNNING, lease_until__lt=now)
        .order_by("lease_until", "id")
        .values_list("id", "attempt", "max_attempts", "cancel_requested", "fencing_token")
    )
    for job_id, attempt, max_attempts, cancel_requested, token in list(expired):
        base = TuningJob.objects.filter(id=job_id, status=Status.RUNNING, lease_until__lt=now, fencing_token=token)
        if cancel_requested:
            if base.update(status=Status.CANCELLED, finished_at=now, lease_until=None) == 1:
                job_event_add(job_id=job_id, message="Lease expired while cancelling; job cancelled.")
            continue
        if attempt >= max_attempts:
            if tuning_job_fail(
                job_id=job_id,
                token=token,
                lease_expired_before=now,
                code="max_attempts_exceeded",
                message=f"The job's worker was lost {attempt} times; giving up.",
                suggestion="Check the worker hosts' logs (OOM killer, preemption), then create the job again.",
            ):
                failed.append(job_id)
            continue
        if base.update(status=Status.QUEUED, lease_owner="", lease_until=None, updated_at=now) == 1:
            job_event_add(
                job_id=job_id,
                level=JobEvent.Level.WARNING,
                message=f"Lease of attempt {attempt} expired; job re-queued to resume from its last checkpoint.",
                data={"status": Status.QUEUED, "attempt": attempt},
            )
            requeued.append(job_id)
    return requeued, failed
