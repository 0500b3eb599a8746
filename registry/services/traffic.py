"""Live traffic counters per version: one conditional UPDATE per request (no read-modify-write).

The inference gateway calls ``traffic_record`` after each answer (or failure); concurrent
requests add to the same row without losing counts because every column is updated with an
``F()`` expression in the database.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from registry.models import ModelVersion, VersionTraffic


def traffic_record(
    *,
    version_id: str,
    latency_ms: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error: bool = False,
    shadow: bool = False,
) -> None:
    """Add one request's numbers to the version's counters (creating the row on first use)."""
    VersionTraffic.objects.get_or_create(version_id=version_id)
    if shadow:
        changes = {"shadow_requests": F("shadow_requests") + 1, "shadow_errors": F("shadow_errors") + int(error)}
    else:
        changes = {
            "requests": F("requests") + 1,
            "errors": F("errors") + int(error),
            "prompt_tokens": F("prompt_tokens") + max(0, int(prompt_tokens)),
            "completion_tokens": F("completion_tokens") + max(0, int(completion_tokens)),
            "latency_ms_sum": F("latency_ms_sum") + float(latency_ms),
            "latency_ms_max": Greatest(F("latency_ms_max"), float(latency_ms)),
        }
    VersionTraffic.objects.filter(version_id=version_id).update(last_request_at=timezone.now(), **changes)


def traffic_touch(*, version_id: str) -> None:
    """Mark the version as asked for now (it stays loaded for the idle window from here)."""
    VersionTraffic.objects.get_or_create(version_id=version_id)
    VersionTraffic.objects.filter(version_id=version_id).update(last_request_at=timezone.now())


def _summary(row: VersionTraffic) -> dict[str, float | int | None]:
    return {
        "requests": row.requests,
        "errors": row.errors,
        "error_rate": (row.errors / row.requests) if row.requests else None,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "mean_latency_ms": round(row.mean_latency_ms, 2) if row.mean_latency_ms is not None else None,
        "max_latency_ms": round(row.latency_ms_max, 2),
        "shadow_requests": row.shadow_requests,
        "shadow_errors": row.shadow_errors,
        "last_request_at": int(row.last_request_at.timestamp()) if row.last_request_at else None,
    }


def traffic_summaries(versions: Iterable[ModelVersion]) -> dict[str, dict[str, float | int | None]]:
    """Each version's counters by version id, in one query (zeros for a version never called)."""
    versions = list(versions)
    rows = {row.version_id: row for row in VersionTraffic.objects.filter(version__in=versions)}
    return {v.id: _summary(rows.get(v.id) or VersionTraffic(version=v)) for v in versions}


def traffic_summary(version: ModelVersion) -> dict[str, float | int | None]:
    """The version's counters as a plain dict (zeros when it never served a request)."""
    return traffic_summaries([version])[version.id]
