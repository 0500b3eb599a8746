"""Which queued job runs next: priority first, then age, within a per-user concurrency limit.

A Celery message is a *wake-up* for its queue, not an order to run one particular job. A
worker that receives one claims the best *eligible* queued job of that queue:

* order: ``priority`` descending, then ``created_at``, then ``id`` (stable);
* eligible: not cancel-requested, attempts left, and its owner runs fewer than
  ``MAX_CONCURRENT_JOBS_PER_USER`` jobs.

The claim itself is ``tunings.services.state.tuning_job_claim`` (a conditional UPDATE), so
two workers that wake up together never run the same job, and a redelivered or duplicate
message finds nothing to claim. The per-user limit is checked and the claim made in one
transaction that first locks the owner's user row (``SELECT ... FOR UPDATE`` on PostgreSQL;
SQLite serialises writers anyway), so two workers cannot both take the owner's last slot.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from tunings.models import TuningJob
from tunings.services.state import tuning_job_claim, tuning_job_fail

log = logging.getLogger(__name__)
Status = TuningJob.Status

# How many queued candidates one wake-up looks at before giving up (owners at their limit
# are skipped in bulk, so this only bounds pathological queues).
SCAN_LIMIT = 200


def per_user_limit() -> int:
    return int(settings.TUNINGLAB["MAX_CONCURRENT_JOBS_PER_USER"])


def queued_jobs(queue: str | None = None) -> Any:
    """Queued, not cancel-requested jobs in scheduling order (``queue=None``: every queue)."""
    qs = TuningJob.objects.filter(status=Status.QUEUED, cancel_requested=False)
    if queue:
        qs = qs.filter(queue=queue)
    return qs.order_by("-priority", "created_at", "id")


def running_count(owner_id: Any) -> int:
    return TuningJob.objects.filter(owner_id=owner_id, status=Status.RUNNING).count()


def _claim_within_limit(*, job_id: str, owner_id: Any, worker_id: str, limit: int) -> tuple[TuningJob | None, bool]:
    """Claim ``job_id`` if its owner has a free slot. Returns (job or None, owner_saturated)."""
    with transaction.atomic():
        # Serialise claims per owner: count + claim must not interleave with another worker's.
        list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk", flat=True))
        if running_count(owner_id) >= limit:
            return None, True
        return tuning_job_claim(job_id=job_id, worker_id=worker_id), False


def claim_next_job(*, worker_id: str, queue: str | None = None) -> TuningJob | None:
    """Claim the highest-priority eligible queued job of ``queue``; None when there is none.

    Jobs that somehow sit in ``queued`` with no attempts left are failed on the way
    (``max_attempts_exceeded``) instead of blocking the queue.
    """
    limit = per_user_limit()
    saturated: set[Any] = set()
    candidates = queued_jobs(queue).values_list("id", "owner_id", "attempt", "max_attempts")[:SCAN_LIMIT]
    for job_id, owner_id, attempt, max_attempts in list(candidates):
        if attempt >= max_attempts:
            tuning_job_fail(
                job_id=job_id,
                code="max_attempts_exceeded",
                message=f"The job already used its {max_attempts} attempts.",
                suggestion="Check the worker hosts' logs (OOM killer, preemption), then create the job again.",
            )
            continue
        if owner_id in saturated:
            continue
        job, owner_full = _claim_within_limit(job_id=job_id, owner_id=owner_id, worker_id=worker_id, limit=limit)
        if owner_full:
            saturated.add(owner_id)
            continue
        if job is not None:
            return job
        # Someone else claimed (or cancelled) it between our read and our UPDATE: next one.
    return None


def eligible_count(queue: str | None = None) -> int:
    """How many queued jobs could start right now (per owner: min(queued, free slots))."""
    limit = per_user_limit()
    queued = dict(
        queued_jobs(queue)
        .filter(attempt__lt=F("max_attempts"))
        .order_by()
        .values_list("owner_id")
        .annotate(n=Count("id"))
        .values_list("owner_id", "n")
    )
    if not queued:
        return 0
    running = dict(
        TuningJob.objects.filter(owner_id__in=list(queued), status=Status.RUNNING)
        .order_by()
        .values_list("owner_id")
        .annotate(n=Count("id"))
        .values_list("owner_id", "n")
    )
    return sum(min(n, max(0, limit - running.get(owner, 0))) for owner, n in queued.items())


def queue_position(job: TuningJob) -> int | None:
    """1-based position of a queued job in its queue's order; None when it is not queued.

    Counts queued jobs of the same queue that sort before it (higher priority, or same
    priority and older). Jobs held back by their owner's concurrency limit still count, so
    this is an upper bound on how many jobs start before this one.
    """
    if job.status != Status.QUEUED or job.cancel_requested:
        return None
    ahead = (
        queued_jobs(job.queue)
        .filter(
            Q(priority__gt=job.priority)
            | Q(priority=job.priority, created_at__lt=job.created_at)
            | Q(priority=job.priority, created_at=job.created_at, id__lt=job.id)
        )
        .count()
    )
    return ahead + 1


def _typical_duration(queue: str) -> float | None:
    """Median run time (s) of the queue's last 20 successful jobs; None without history."""
    rows = list(
        TuningJob.objects.filter(
            queue=queue, status=Status.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False
        )
        .order_by("-finished_at")
        .values_list("started_at", "finished_at")[:20]
    )
    if not rows:
        return None
    durations = sorted((end - start).total_seconds() for start, end in rows)
    return durations[len(durations) // 2]


def estimated_start(job: TuningJob) -> datetime | None:
    """A rough start time for a queued job; None when not queued or there is no history.

    Model: the queue's running jobs free their slots after their own ETA (or the typical
    duration), then every job ahead takes one typical duration on one of those slots. It
    assumes the number of busy workers stays as it is now; it is a hint, not a promise.
    """
    position = queue_position(job)
    if position is None:
        return None
    typical = _typical_duration(job.queue)
    running = list(
        TuningJob.objects.filter(queue=job.queue, status=Status.RUNNING).values_list("eta_seconds", flat=True)
    )
    if typical is None and not any(eta is not None for eta in running):
        return None
    typical = typical or max(eta or 0.0 for eta in running)
    slots = sorted((eta if eta is not None else typical) for eta in running) or [0.0]
    # Greedy list scheduling: each job ahead takes the slot that frees first.
    for _ in range(position - 1):
        slots[0] += typical
        slots.sort()
    return timezone.now() + timedelta(seconds=slots[0])
