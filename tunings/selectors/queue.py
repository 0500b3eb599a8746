"""Reads over the job queue: scheduling order, per-owner running counts, how many jobs could start.

One definition of "the queue" for everyone who reads it: workers claim in this order
(``workers.scheduling``), the sweeper counts eligible jobs to decide how many wake-ups to
send (``tunings.services.dispatch``), and the API reports a job's place in the same order
(``tunings.selectors.jobs``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Count, F, QuerySet

from tunings.models import TuningJob

Status = TuningJob.Status
# Scheduling order: priority descending, then oldest first, then id (stable).
QUEUE_ORDER = ("-priority", "created_at", "id")


def per_user_limit() -> int:
    """How many jobs one owner may run at once (``MAX_CONCURRENT_JOBS_PER_USER``)."""
    return int(settings.TUNINGLAB["MAX_CONCURRENT_JOBS_PER_USER"])


def queued_jobs(queue: str | None = None) -> QuerySet[TuningJob]:
    """Queued, not cancel-requested jobs in scheduling order (``queue=None``: every queue)."""
    qs = TuningJob.objects.filter(status=Status.QUEUED, cancel_requested=False)
    if queue:
        qs = qs.filter(queue=queue)
    return qs.order_by(*QUEUE_ORDER)


def queues_with_queued_jobs() -> set[str]:
    """The queue names that hold at least one queued job."""
    return set(TuningJob.objects.filter(status=Status.QUEUED).values_list("queue", flat=True).distinct())


def running_count(owner_id: Any) -> int:
    """How many jobs ``owner_id`` runs right now."""
    return TuningJob.objects.filter(owner_id=owner_id, status=Status.RUNNING).count()


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
