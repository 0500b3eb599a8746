"""Celery tasks: a few lines each; the logic lives in ``workers.runner`` and ``workers.sweeper``.

Registered under the names in ``tuninglab.task_names``: lower layers send them by name.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tuninglab.task_names import RUN_TUNING_JOB, SWEEP_EXPIRED_LEASES
from workers.runner import run_job, worker_identity
from workers.sweeper import sweep


@shared_task(
    bind=True,
    name=RUN_TUNING_JOB,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_tuning_job(self: Any, job_id: str) -> str | None:
    """Wake-up for the message's queue: claim and run its best eligible job (maybe none)."""
    queue = (self.request.delivery_info or {}).get("routing_key") or None
    return run_job(job_id, worker_id=worker_identity(self.request.hostname or "celery"), queue=queue)


@shared_task(name=SWEEP_EXPIRED_LEASES, ignore_result=True)
def sweep_expired_leases() -> dict[str, Any]:
    """Beat task: re-queue expired leases and re-dispatch stranded queued jobs."""
    return sweep().as_dict()
