"""The database's view of the lab as Prometheus metrics, computed when Prometheus scrapes.

Jobs, queues, running jobs' progress, failures, and the gateway's per-version counters all
live in database rows that the workers and the gateway already write. Reading them at
scrape time (a few aggregate queries, ``observability.selectors``) instead of keeping
counters in memory means every web process answers the same numbers, nothing is lost when
a process restarts, and the Celery workers need no metrics endpoint of their own for them.

docs/observability.md lists every metric with its labels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY

from observability import selectors

log = logging.getLogger(__name__)

JOB_LABELS = ["job", "model", "queue"]
VERSION_LABELS = ["owner", "model", "version"]
# (metric suffix, help, RunningJob attribute): one gauge per running job each.
RUNNING_JOB_GAUGES = (
    ("loss", "Training loss at the job's last written step.", "loss"),
    ("eval_loss", "Validation loss at the job's last evaluation.", "eval_loss"),
    ("learning_rate", "Learning rate at the job's last written step.", "learning_rate"),
    ("tokens_per_second", "Training throughput at the job's last written step.", "tokens_per_second"),
    ("progress_ratio", "Share of the job's steps done (0..1).", "progress_ratio"),
    ("eta_seconds", "The worker's estimate of the time the job still needs.", "eta_seconds"),
    ("step", "The job's last written optimizer step.", "step"),
    ("trained_tokens", "Tokens the job has trained on so far.", "trained_tokens"),
)


class DatabaseCollector:
    """A ``prometheus_client`` collector over the lab's tables (register it once per registry)."""

    def describe(self) -> Iterable[Metric]:
        # Names only: a registry asks for them at registration, which must not query (migrate).
        return [*self._families().values(), _database_up(1)]

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        try:
            self._fill(families)
        except DatabaseError:
            # A database outage must not take down the scrape: the request and process metrics
            # still answer, and this gauge says why the lab's own series are missing.
            log.exception("metrics: reading the database failed")
            yield _database_up(0)
            return
        yield from families.values()
        yield _database_up(1)

    def _families(self) -> dict[str, Any]:
        families: dict[str, Any] = {
            "jobs": GaugeMetricFamily(
                "tuninglab_jobs", "Tuning jobs per status and queue.", labels=["status", "queue"]
            ),
            "queue_wait": GaugeMetricFamily(
                "tuninglab_queue_wait_seconds",
                "Age of the oldest queued job per queue (0: nothing waits).",
                labels=["queue"],
            ),
            "heartbeat": GaugeMetricFamily(
                "tuninglab_job_heartbeat_age_seconds",
                "Seconds since the running job's worker last renewed its lease.",
                labels=JOB_LABELS,
            ),
            "failed": GaugeMetricFamily(
                "tuninglab_failed_jobs",
                "Failed tuning jobs per error code (a gauge: deleting a user deletes their jobs).",
                labels=["code"],
            ),
            "requests": CounterMetricFamily(
                "tuninglab_inference_requests", "Gateway requests answered per version.", labels=VERSION_LABELS
            ),
            "errors": CounterMetricFamily(
                "tuninglab_inference_errors", "Gateway requests per version that vLLM failed.", labels=VERSION_LABELS
            ),
            "tokens": CounterMetricFamily(
                "tuninglab_inference_tokens",
                "Tokens per version, by kind (prompt or completion).",
                labels=[*VERSION_LABELS, "kind"],
            ),
            "latency": CounterMetricFamily(
                "tuninglab_inference_request_seconds",
                "Sum of request durations per version (divide its rate by the requests' rate for the mean).",
                labels=VERSION_LABELS,
            ),
            "shadow": CounterMetricFamily(
                "tuninglab_inference_shadow_requests",
                "Requests mirrored to a version as a shadow (answers recorded, not returned).",
                labels=VERSION_LABELS,
            ),
            "weight": GaugeMetricFamily(
                "tuninglab_route_weight", "A version's weight in its model's traffic split.", labels=VERSION_LABELS
            ),
        }
        for suffix, help_text, _ in RUNNING_JOB_GAUGES:
            families[suffix] = GaugeMetricFamily(f"tuninglab_job_{suffix}", help_text, labels=JOB_LABELS)
        return families

    def _fill(self, families: dict[str, Any]) -> None:
        now = timezone.now()
        counts = selectors.job_counts()
        for (status, queue), n in sorted(counts.items()):
            families["jobs"].add_metric([status, queue], n)

        oldest = selectors.oldest_queued()
        # Every known queue gets a series (0 when empty), so a panel shows a flat line, not a gap.
        queues = {queue for _, queue in counts} | oldest.keys()
        for queue in sorted(queues):
            wait = (now - oldest[queue]).total_seconds() if queue in oldest else 0.0
            families["queue_wait"].add_metric([queue], max(wait, 0.0))

        for job in selectors.running_jobs(lease_seconds=float(settings.TUNINGLAB["LEASE_SECONDS"])):
            labels = [job.id, job.model, job.queue]
            for suffix, _, attribute in RUNNING_JOB_GAUGES:
                value = getattr(job, attribute)
                if value is not None:  # e.g. no eval_loss before the first evaluation
                    families[suffix].add_metric(labels, float(value))
            if job.renewed_at is not None:
                families["heartbeat"].add_metric(labels, max((now - job.renewed_at).total_seconds(), 0.0))

        for code, n in sorted(selectors.failed_job_counts().items()):
            families["failed"].add_metric([code], n)

        for row in selectors.version_counters():
            labels = [row.owner, row.model, str(row.version)]
            families["requests"].add_metric(labels, row.requests)
            families["errors"].add_metric(labels, row.errors)
            families["tokens"].add_metric([*labels, "prompt"], row.prompt_tokens)
            families["tokens"].add_metric([*labels, "completion"], row.completion_tokens)
            families["latency"].add_metric(labels, row.latency_seconds_sum)
            families["shadow"].add_metric(labels, row.shadow_requests)

        for split in selectors.route_weights():
            families["weight"].add_metric([split.owner, split.model, str(split.version)], split.weight)


def _database_up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "tuninglab_metrics_database_up", "1 when the last scrape could read the lab's tables.", value=value
    )


DATABASE_COLLECTOR = DatabaseCollector()
_registered = {"default": False}


def register_once() -> None:
    """Add the collector to prometheus_client's default registry (a second add would raise)."""
    if not _registered["default"]:
        REGISTRY.register(DATABASE_COLLECTOR)
        _registered["default"] = True
