"""Which queued job runs next: priority first, then age, within a per-user concurrency limit.

A Celery message is a *wake-up* for its queue, not an order to run one particular job. A
worker that receives one claims the best *eligible* queued job of that queue:

* order: ``priority`` descending, then ``created_at``, then ``id`` (stable;
  ``tunings.selectors.queue.queued_jobs``, the order the API reports queue positions in);
* eligible: not cancel-requested, attempts left, and its owner runs fewer than
  ``MAX_CONCURRENT_JOBS_PER_USER`` jobs. Owners at their limit are left out by the candidate
  query itself (``tunings.selectors.queue.claimable_jobs``), so however many high-priority
  jobs they have queued, the jobs of other owners behind them are still seen.

The claim itself is ``tunings.services.state.tuning_job_claim`` (a conditional UPDATE), so
two workers that wake up together never run the same job, and a redelivered or duplicate
message finds nothing to claim. The per-user limit is checked and the claim made in one
transaction that first locks the owner's user row (``SELECT ... FOR UPDATE`` on PostgreSQL;
SQLite serialises writers anyway), so two workers cannot both take the owner's last slot.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from tuninglab.services import user_row_lock
from tunings.models import TuningJob
from tunings.selectors.queue import claimable_jobs, per_user_limit, running_count
from tunings.services.state import tuning_job_claim, tuning_job_fail

log = logging.getLogger(__name__)
Status = TuningJob.Status

# How many candidates one wake-up tries before giving up. Owners at their limit are already
# left out by the query, so only races use this up (a job claimed or cancelled under us, an
# owner filled by another worker); the next wake-up queries again.
SCAN_LIMIT = 200


def _claim_within_limit(*, job_id: str, owner_id: Any, worker_id: str, limit: int) -> tuple[TuningJob | None, bool]:
    """Claim ``job_id`` if its owner has a free slot. Returns (job or None, owner_saturated)."""
    with transaction.atomic():
        # Serialise claims per owner: count + claim must not interleave with another worker's.
        user_row_lock(user_id=owner_id)
        if running_count(owner_id) >= limit:
            return None, True
        return tuning_job_claim(job_id=job_id, worker_id=worker_id), False


def claim_next_job(*, worker_id: str, queue: str | None = None) -> TuningJob | None:
    """Claim the highest-priority eligible queued job of ``queue``; None when there is none.

    Jobs that somehow sit in ``queued`` with no attempts left are failed on the way
    (``max_attempts_exceeded``) instead of blocking the queue.
    """
    limit = per_user_limit()
    saturated: set[Any] = set()
    candidates = claimable_jobs(queue).values_list("id", "owner_id", "attempt", "max_attempts")[:SCAN_LIMIT]
    for job_id, owner_id, attempt, max_attempts in list(candidates):
        if attempt >= max_attempts:
            tuning_job_fail(
                job_id=job_id,
                code="max_attempts_exceeded",
                message=f"The job already used its {max_attempts} attempts.",
                suggestion="Check the worker hosts' logs (OOM killer, preemption), then create the job again.",
            )
            continue
        if owner_id in saturated:
            continue
        job, owner_full = _claim_within_limit(job_id=job_id, owner_id=owner_id, worker_id=worker_id, limit=limit)
        if owner_full:
            # Another worker took the owner's last slot since our query: skip the rest of theirs.
            saturated.add(owner_id)
            continue
        if job is not None:
            return job
        # Someone else claimed (or cancelled) it between our read and our UPDATE: next one.
    return None
