"""Celery tasks: a few lines each; the logic lives in ``workers.runner`` and ``workers.sweeper``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.runner import run_job, worker_identity
from workers.sweeper import sweep


@shared_task(
    bind=True,
    name="workers.tasks.run_tuning_job",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_tuning_job(self: Any, job_id: str) -> str | None:
    """Wake-up for the message's queue: claim and run its best eligible job (maybe none)."""
    queue = (self.request.delivery_info or {}).get("routing_key") or None
    return run_job(job_id, worker_id=worker_identity(self.request.hostname or "celery"), queue=queue)


@shared_task(name="workers.tasks.sweep_expired_leases", ignore_result=True)
def sweep_expired_leases() -> dict[str, Any]:
    """Beat task: re-queue expired leases and re-dispatch stranded queued jobs."""
    return sweep().as_dict()
