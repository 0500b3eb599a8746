"""The reads behind ``/metrics``: a handful of aggregate queries over every owner's rows.

Each function is one query whatever the number of jobs or versions (running jobs and served
versions come back as one row each), so a scrape costs the same few queries every time. They
are not owner-scoped like the other apps' selectors: Prometheus is the operator's view.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Min
from django.db.models.fields.json import KeyTextTransform

from inference.models import RouteSplit
from registry.models import VersionTraffic
from tunings.models import TuningJob

Status = TuningJob.Status


@dataclass(frozen=True)
class RunningJob:
    """One running job's latest progress as the worker last wrote it."""

    id: str
    queue: str
    model: str  # base model name
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    tokens_per_second: float | None
    progress_ratio: float  # 0..1 (the row holds 0..100)
    eta_seconds: float | None
    step: int
    trained_tokens: int
    renewed_at: datetime | None  # last lease renewal (the worker's heartbeat)


@dataclass(frozen=True)
class VersionCounters:
    """One version's serving counters (``VersionTraffic``), named for people."""

    owner: str
    model: str
    version: int
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_seconds_sum: float
    shadow_requests: int
    shadow_errors: int


@dataclass(frozen=True)
class SplitWeight:
    """One version's weight in its model's route."""

    owner: str
    model: str
    version: int
    weight: int


def job_counts() -> dict[tuple[str, str], int]:
    """Jobs per ``(status, queue)``."""
    rows = TuningJob.objects.order_by().values("status", "queue").annotate(n=Count("id"))
    return {(row["status"], row["queue"]): row["n"] for row in rows}


def oldest_queued() -> dict[str, datetime]:
    """When the oldest job still queued on each queue was created."""
    rows = TuningJob.objects.filter(status=Status.QUEUED).order_by().values("queue").annotate(oldest=Min("created_at"))
    return {row["queue"]: row["oldest"] for row in rows}


def running_jobs(*, lease_seconds: float) -> list[RunningJob]:
    """Every running job with its progress columns (one query; the base model is joined)."""
    rows = (
        TuningJob.objects.filter(status=Status.RUNNING)
        .order_by("id")
        .values(
            "id",
            "queue",
            "base_model__name",
            "current_loss",
            "eval_loss",
            "learning_rate",
            "tokens_per_second",
            "progress",
            "eta_seconds",
            "current_step",
            "trained_tokens",
            "lease_until",
        )
    )
    return [
        RunningJob(
            id=row["id"],
            queue=row["queue"],
            model=row["base_model__name"],
            loss=row["current_loss"],
            eval_loss=row["eval_loss"],
            learning_rate=row["learning_rate"],
            tokens_per_second=row["tokens_per_second"],
            progress_ratio=min(max(row["progress"] / 100.0, 0.0), 1.0),
            eta_seconds=row["eta_seconds"],
            step=row["current_step"],
            trained_tokens=row["trained_tokens"],
            # Every renewal sets lease_until = now + LEASE_SECONDS, so this is when it happened.
            renewed_at=row["lease_until"] - timedelta(seconds=lease_seconds) if row["lease_until"] else None,
        )
        for row in rows
    ]


def failed_job_counts() -> dict[str, int]:
    """Failed jobs per error code (``unknown`` for a failure stored without one)."""
    rows = (
        TuningJob.objects.filter(status=Status.FAILED)
        .order_by()
        .values(code=KeyTextTransform("code", "error"))
        .annotate(n=Count("id"))
    )
    counts: dict[str, int] = {}
    for row in rows:
        code = row["code"] or "unknown"
        counts[code] = counts.get(code, 0) + row["n"]
    return counts


def version_counters() -> list[VersionCounters]:
    """Serving counters of every version that was ever asked for."""
    rows = VersionTraffic.objects.order_by("version_id").values(
        "version__owner__username",
        "version__registered_model__name",
        "version__version",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms_sum",
        "shadow_requests",
        "shadow_errors",
    )
    return [
        VersionCounters(
            owner=row["version__owner__username"],
            model=row["version__registered_model__name"],
            version=row["version__version"],
            requests=row["requests"],
            errors=row["errors"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            latency_seconds_sum=row["latency_ms_sum"] / 1000.0,
            shadow_requests=row["shadow_requests"],
            shadow_errors=row["shadow_errors"],
        )
        for row in rows
    ]


def route_weights() -> list[SplitWeight]:
    """Every route's split: each version's weight."""
    rows = RouteSplit.objects.order_by("route_id", "version__version").values(
        "route__registered_model__owner__username", "route__registered_model__name", "version__version", "weight"
    )
    return [
        SplitWeight(
            owner=row["route__registered_model__owner__username"],
            model=row["route__registered_model__name"],
            version=row["version__version"],
            weight=row["weight"],
        )
        for row in rows
    ]
