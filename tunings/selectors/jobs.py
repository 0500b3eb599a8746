"""Reads for tuning jobs, their events and checkpoints — always scoped to the caller."""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Coalesce
from django.utils import timezone

from tuninglab.errors import InvalidRequestError, NotFoundError
from tunings.models import Checkpoint, JobEvent, TuningJob
from tunings.selectors.queue import queued_jobs

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
        match = _METADATA_PARAM.fullmatch(name)
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


def _existing_dirs(paths: Iterable[Path]) -> set[Path]:
    """Which of ``paths`` are directories: one listing per parent dir, not a stat per path."""
    by_parent: dict[Path, set[str]] = {}
    for path in paths:
        by_parent.setdefault(path.parent, set()).add(path.name)
    existing: set[Path] = set()
    for parent, names in by_parent.items():
        try:
            with os.scandir(parent) as entries:
                existing |= {parent / e.name for e in entries if e.name in names and e.is_dir()}
        except OSError:  # the whole run dir is gone (job files cleaned up)
            continue
    return existing


def checkpoint_list(*, job: TuningJob) -> QuerySet[Checkpoint]:
    """A job's checkpoints whose files still exist, newest (highest step) first.

    The engine prunes to the newest ``keep_checkpoints`` directories after each save, but the
    rows stay (the event history refers to them). So the list is the rows whose directory is
    still on disk: one query for the job's paths and one directory listing per checkpoint root
    (a run has one or a few), whatever the page size; the page itself is then a plain filter.
    """
    rows = Checkpoint.objects.filter(job=job).order_by().values_list("id", "path")
    data_dir = Path(settings.DATA_DIR)
    paths = {pk: data_dir / path for pk, path in rows if path}  # absolute paths ignore data_dir
    existing = _existing_dirs(paths.values())
    kept = [pk for pk, path in paths.items() if path in existing]
    return Checkpoint.objects.filter(job=job, id__in=kept).order_by("-step", "-id")


@dataclass(frozen=True)
class QueueInfo:
    """Where a job stands in its queue: ``position`` (1-based) and ``estimated_start``; None unless queued."""

    position: int | None = None
    estimated_start: datetime | None = None


NOT_QUEUED = QueueInfo()


def _is_waiting(job: TuningJob) -> bool:
    """Judged on the state the job was read in, so a response never pairs ``running`` with a position."""
    return job.status == TuningJob.Status.QUEUED and not job.cancel_requested


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


def _start_offsets(*, typical: float | None, running_etas: list[float | None], count: int) -> list[float] | None:
    """Seconds from now until the 1st .. ``count``-th queued job starts; None without any history.

    Model: the queue's running jobs free their slots after their own ETA (or the typical
    duration), then every job ahead takes one typical duration on one of those slots. It
    assumes the number of busy workers stays as it is now; it is a hint, not a promise.
    """
    if typical is None and not any(eta is not None for eta in running_etas):
        return None
    typical = typical or max(eta or 0.0 for eta in running_etas)
    slots = [(eta if eta is not None else typical) for eta in running_etas] or [0.0]
    heapq.heapify(slots)
    # Greedy list scheduling: each job starts on the slot that frees first and holds it for one
    # typical duration, so the k-th start is the heap's minimum after k-1 such placements.
    offsets = []
    for _ in range(count):
        offsets.append(slots[0])
        heapq.heapreplace(slots, slots[0] + typical)
    return offsets


def tuning_job_queue_info(*, jobs: Iterable[TuningJob]) -> dict[str, QueueInfo]:
    """Queue position and estimated start of every job in ``jobs`` (a page), keyed by job id.

    Positions count every owner's queued jobs in the order workers claim them
    (``tunings.selectors.queue.queued_jobs``), so they are an upper bound on how many jobs
    start before this one: jobs held back by their owner's concurrency limit still count.
    Jobs that are not queued (by the state they were read in) get ``NOT_QUEUED``.

    Costs two queries plus one per distinct queue among the page's queued jobs, however
    long the page is: serializers read the result instead of querying per row.
    """
    jobs = list(jobs)
    info = {job.id: NOT_QUEUED for job in jobs}
    waiting = {job.id: job.queue for job in jobs if _is_waiting(job)}
    if not waiting:
        return info
    queues = sorted(set(waiting.values()))
    # Each page job's place = the queued jobs of its queue ahead of it in claim order, counted by
    # the database (one query, a correlated COUNT per page job along the scheduling index) rather
    # than streaming the queue's ids here: a new job is last, and its read must not cost O(queue)
    # rows sent to Python. A page job no longer queued left after it was read: NOT_QUEUED.
    ahead = (
        queued_jobs()
        .filter(queue=OuterRef("queue"))
        .filter(
            Q(priority__gt=OuterRef("priority"))
            | Q(priority=OuterRef("priority"), created_at__lt=OuterRef("created_at"))
            | Q(priority=OuterRef("priority"), created_at=OuterRef("created_at"), id__lt=OuterRef("id"))
        )
        .order_by()
        .values("queue")
        .annotate(n=Count("id"))
        .values("n")
    )
    positions: dict[str, dict[str, int]] = {queue: {} for queue in queues}
    still_queued = queued_jobs().filter(id__in=list(waiting)).order_by()
    for job_id, queue, n_ahead in still_queued.annotate(ahead=Coalesce(Subquery(ahead), 0)).values_list(
        "id", "queue", "ahead"
    ):
        positions[queue][job_id] = n_ahead + 1
    running_etas: dict[str, list[float | None]] = {queue: [] for queue in queues}
    running = TuningJob.objects.filter(queue__in=queues, status=TuningJob.Status.RUNNING)
    for queue, eta in running.values_list("queue", "eta_seconds"):
        running_etas[queue].append(eta)
    now = timezone.now()
    for queue, queue_positions in positions.items():
        if not queue_positions:
            continue
        offsets = _start_offsets(
            typical=_typical_duration(queue), running_etas=running_etas[queue], count=max(queue_positions.values())
        )
        for job_id, position in queue_positions.items():
            start = now + timedelta(seconds=offsets[position - 1]) if offsets is not None else None
            info[job_id] = QueueInfo(position=position, estimated_start=start)
    return info


def tuning_job_queue_position(*, job: TuningJob) -> int | None:
    """1-based place of one job among the queued jobs of its queue (see ``tuning_job_queue_info``)."""
    return tuning_job_queue_info(jobs=[job])[job.id].position


def tuning_job_estimated_start(*, job: TuningJob) -> datetime | None:
    """A rough start time for one queued job (see ``tuning_job_queue_info``)."""
    return tuning_job_queue_info(jobs=[job])[job.id].estimated_start
