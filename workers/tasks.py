"""Celery tasks: a few lines each; the logic lives in ``workers.runner``, ``workers.sweeper`` and
the registry services (evaluations, MLflow sync).

Registered under the names in ``tuninglab.task_names``: lower layers send them by name.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from registry.evaluation.runner import comparison_run, evaluation_run
from registry.services.mlflow_sync import registry_sync
from tuninglab.task_names import (
    CLEANUP,
    FOLLOW_NODE,
    RUN_COMPARISON,
    RUN_EVALUATION,
    RUN_TUNING_JOB,
    SWEEP_EXPIRED_LEASES,
    SYNC_REGISTRY,
)
from tunings.services.cleanup import cleanup_run
from workers.celery_metrics import connect_signals
from workers.followers import FollowerStart
from workers.followers import follow_node as run_follower
from workers.runner import run_job, worker_identity
from workers.sweeper import sweep

# Every worker imports this module: task counters, and the metrics port when one is set.
connect_signals()


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


# Acked late (a busy follower holds no other wake-up in prefetch) but never redelivered after
# its worker died: that node's ranks are gone, node 0 has released the attempt, and the next
# attempt sends fresh starts. A redelivered or late start finds its attempt over and starts nothing.
@shared_task(bind=True, name=FOLLOW_NODE, acks_late=True, reject_on_worker_lost=False, ignore_result=True)
def follow_node(
    self: Any, job_id: str, attempt: int, token: int, node_rank: int, master_addr: str, master_port: int
) -> str:
    """Run node ``node_rank`` of a multi-node job's attempt until its launcher exits (``workers.followers``)."""
    start = FollowerStart(job_id, attempt, token, node_rank, master_addr, master_port)
    return run_follower(start, worker_id=worker_identity(self.request.hostname or "celery"))


@shared_task(name=SWEEP_EXPIRED_LEASES, ignore_result=True)
def sweep_expired_leases() -> dict[str, Any]:
    """Beat task: re-queue expired leases and re-dispatch stranded queued jobs."""
    return sweep().as_dict()


@shared_task(name=RUN_EVALUATION, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_evaluation(evaluation_id: str) -> None:
    """Run one queued evaluation (a duplicate message finds it claimed and does nothing)."""
    evaluation_run(evaluation_id=evaluation_id)


@shared_task(name=RUN_COMPARISON, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_comparison(comparison_id: str) -> None:
    """Run one queued A/B comparison (a duplicate message finds it claimed and does nothing)."""
    comparison_run(comparison_id=comparison_id)


@shared_task(name=SYNC_REGISTRY, ignore_result=True)
def sync_registry() -> None:
    """Mirror every pending registry row to MLflow (idempotent: safe to run any number of times)."""
    registry_sync()


@shared_task(name=CLEANUP, ignore_result=True)
def cleanup() -> dict[str, Any]:
    """Beat task: delete finished jobs' files and other leftovers (``manage.py cleanup``)."""
    return cleanup_run().as_dict()
