"""Operator actions: retry a failed or cancelled job as a new job; change a job's priority.

A retry is a *new* job (new id, attempt 0, fresh events) with the same parameters, so the
old job's history, error and checkpoints stay as they were; both jobs get an event that
links them.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from tuninglab.errors import ConflictError
from tunings.models import TuningJob
from tunings.services.dispatch import dispatch_job
from tunings.services.state import job_event_add, tuning_job_queue

RETRYABLE = (TuningJob.Status.FAILED, TuningJob.Status.CANCELLED)

# The job's request: model, data, method, hyperparameters and scheduling. Everything else
# (state, progress, lease, results, idempotency key) starts fresh on the copy.
_COPIED_FIELDS = (
    "owner_id",
    "base_model_id",
    "training_file_id",
    "validation_file_id",
    "method",
    "hyperparameters",
    "resolved_hyperparameters",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "seed",
    "suffix",
    "model_name",
    "metadata",
    "priority",
    "resources",
    "distributed",
    "queue",
    "max_attempts",
)


def tuning_job_retry(*, job: TuningJob, by: Any = None) -> TuningJob:
    """Create a copy of a failed or cancelled ``job``, queue it, and dispatch it after commit.

    Raises:
        ConflictError: ``invalid_state`` when the job is not failed or cancelled.
    """
    who = getattr(by, "username", None) or "system"
    with transaction.atomic():
        # Lock the original so two operators clicking "retry" at once make one copy each
        # *knowingly* (both see the same status), and the events stay in order.
        current = TuningJob.objects.select_for_update().get(pk=job.pk)
        if current.status not in RETRYABLE:
            raise ConflictError(
                f"Cannot retry job {current.id}: it is {current.status}; only failed or cancelled jobs can be retried.",
                code="invalid_state",
                param="job_id",
            )
        copy = TuningJob(**{field: getattr(current, field) for field in _COPIED_FIELDS})
        copy.save()
        job_event_add(
            job_id=copy.id, message=f"Created by {who} as a retry of {current.id}.", data={"retry_of": current.id}
        )
        copy = tuning_job_queue(job=copy)
        job_event_add(job_id=current.id, message=f"Retried by {who} as {copy.id}.", data={"retried_as": copy.id})
        transaction.on_commit(lambda: dispatch_job(copy.id, copy.queue))
    return copy


def tuning_job_set_priority(*, job: TuningJob, priority: int, by: Any = None) -> TuningJob:
    """Change a waiting or running job's priority (higher runs first). Logged as an event.

    Raises:
        ConflictError: ``invalid_state`` for a finished job (its priority no longer means anything).
    """
    who = getattr(by, "username", None) or "system"
    with transaction.atomic():
        current = TuningJob.objects.select_for_update().get(pk=job.pk)
        if current.is_terminal:
            raise ConflictError(
                f"Cannot change the priority of job {current.id}: it is {current.status}.",
                code="invalid_state",
                param="priority",
            )
        old = current.priority
        if old != priority:
            current.priority = priority
            current.save(update_fields=["priority", "updated_at"])
            job_event_add(
                job_id=current.id,
                message=f"Priority changed from {old} to {priority} by {who}.",
                data={"priority": priority, "previous_priority": old},
            )
    job.refresh_from_db()
    return job
