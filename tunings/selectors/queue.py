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
# Jobs that have not started yet: what ``MAX_QUEUED_JOBS_PER_USER`` counts.
WAITING = (Status.VALIDATING_FILES, Status.QUEUED)


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


def waiting_count(owner_id: Any) -> int:
    """How many of ``owner_id``'s jobs wait to start (``validating_files`` or ``queued``)."""
    return TuningJob.objects.filter(owner_id=owner_id, status__in=WAITING).count()


def saturated_owner_ids(limit: int) -> QuerySet[TuningJob]:
    """Owners who run ``limit`` or more jobs: a subquery (one ``GROUP BY ... HAVING``), not a list."""
    return (
        TuningJob.objects.filter(status=Status.RUNNING)
        .order_by()
        .values("owner_id")
        .annotate(n=Count("id"))
        .filter(n__gte=limit)
        .values("owner_id")
    )


def claimable_jobs(queue: str | None = None) -> QuerySet[TuningJob]:
    """Queued jobs whose owner has a free slot, in scheduling order.

    The limit is applied in the query itself: an owner at the limit with any number of queued
    jobs, at any priority, must not hide the jobs of the owners behind them. The claim
    recounts under a row lock (``workers.scheduling``); this only picks the candidates.
    """
    limit = per_user_limit()
    if limit <= 0:
        return queued_jobs(queue).none()
    return queued_jobs(queue).exclude(owner_id__in=saturated_owner_ids(limit))


def eligible_count(queue: str | None = None) -> int:
    """How many queued jobs could start right now (per owner: min(queued, free slots)).

    Counts over ``claimable_jobs`` (the candidates a worker would claim from) with attempts left.
    """
    limit = per_user_limit()
    queued = dict(
        claimable_jobs(queue)
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
