"""Reads for tuning jobs, their events and checkpoints — always scoped to the caller."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from tuninglab.errors import InvalidRequestError, NotFoundError
from tunings.models import Checkpoint, JobEvent, TuningJob

_METADATA_PARAM = re.compile(r"^metadata\[(.{1,64})\]$")


def tuning_job_get(*, owner: Any, job_id: Any, param: str = "job_id") -> TuningJob:
    """The caller's job. Someone else's id is a 404, exactly like an id that does not exist."""
    if not isinstance(job_id, str) or not job_id:
        raise InvalidRequestError("job_id is required.", code="missing_required_parameter", param=param)
    job = TuningJob.objects.select_related("owner", "base_model").filter(id=job_id, owner=owner).first()
    if job is None:
        raise NotFoundError(f"No such tuning job: {job_id}.", code="not_found", param=param)
    return job


def _metadata_filters(query_params: Any) -> dict[str, str]:
    """``metadata[key]=value`` (repeatable) and the plain ``metadata_key``/``metadata_value`` pair."""
    pairs: dict[str, str] = {}
    for name in query_params:
        match = _METADATA_PARAM.match(name)
        if match:
            pairs[match.group(1)] = query_params.get(name)
    key, value = query_params.get("metadata_key"), query_params.get("metadata_value")
    if key is not None or value is not None:
        if not key or value is None:
            raise InvalidRequestError(
                "metadata_key and metadata_value go together.", code="invalid_filter", param="metadata_key"
            )
        pairs[key] = value
    return pairs


def tuning_job_list(*, owner: Any, query_params: Any) -> QuerySet[TuningJob]:
    """The caller's jobs, newest first, filtered by ``status``, ``model`` and metadata pairs."""
    queryset = TuningJob.objects.select_related("owner", "base_model").filter(owner=owner)
    status = query_params.get("status")
    if status:
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        bad = [s for s in statuses if s not in TuningJob.Status.values]
        if bad:
            raise InvalidRequestError(
                f"Unknown status {bad[0]!r}; one of {', '.join(TuningJob.Status.values)} (comma-separated).",
                code="invalid_filter",
                param="status",
            )
        queryset = queryset.filter(status__in=statuses)
    model = query_params.get("model")
    if model:
        queryset = queryset.filter(base_model__name=model)
    for index, (key, value) in enumerate(sorted(_metadata_filters(query_params).items())):
        # KeyTransform takes the key literally (no "__" path parsing), so any key is safe; the
        # comparison is JSON-typed, and metadata values are always strings.
        alias = f"_metadata_{index}"
        queryset = queryset.alias(**{alias: KeyTransform(key, "metadata")}).filter(**{alias: value})
    return queryset.order_by("-created_at", "-id")


def job_event_list(*, job: TuningJob) -> QuerySet[JobEvent]:
    """A job's events, newest first (OpenAI's order); ``seq`` orders events within a clock tick."""
    return JobEvent.objects.filter(job=job).order_by("-seq", "-id")


def checkpoint_list(*, job: TuningJob) -> QuerySet[Checkpoint]:
    """A job's complete checkpoints, newest (highest step) first."""
    return Checkpoint.objects.filter(job=job).order_by("-step", "-id")


def tuning_job_queue_position(*, job: TuningJob) -> int | None:
    """1-based place among the queued jobs of the job's queue (priority desc, then oldest first).

    None unless the job is queued. Counts every owner's jobs: the queue is shared, and jobs held
    back by their owner's concurrency limit still count, so this is an upper bound on how many
    jobs start before this one. The order is the one workers claim in (``workers.scheduling``).
    """
    if job.status != TuningJob.Status.QUEUED or job.cancel_requested:
        return None
    ahead = TuningJob.objects.filter(status=TuningJob.Status.QUEUED, cancel_requested=False, queue=job.queue).filter(
        Q(priority__gt=job.priority)
        | Q(priority=job.priority, created_at__lt=job.created_at)
        | Q(priority=job.priority, created_at=job.created_at, id__lt=job.id)
    )
    return ahead.count() + 1


def _typical_duration(queue: str) -> float | None:
    """Median run time (s) of the queue's last 20 successful jobs; None without history."""
    rows = list(
        TuningJob.objects.filter(
            queue=queue, status=TuningJob.Status.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False
        )
        .order_by("-finished_at")
        .values_list("started_at", "finished_at")[:20]
    )
    if not rows:
        return None
    durations = sorted((end - start).total_seconds() for start, end in rows)
    return durations[len(durations) // 2]


def tuning_job_estimated_start(*, job: TuningJob) -> datetime | None:
    """A rough start time for a queued job; None when not queued or there is no history.

    Model: the queue's running jobs free their slots after their own ETA (or the typical
    duration), then every job ahead takes one typical duration on one of those slots. It
    assumes the number of busy workers stays as it is now; it is a hint, not a promise.
    """
    position = tuning_job_queue_position(job=job)
    if position is None:
        return None
    typical = _typical_duration(job.queue)
    running = list(
        TuningJob.objects.filter(queue=job.queue, status=TuningJob.Status.RUNNING).values_list("eta_seconds", flat=True)
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
