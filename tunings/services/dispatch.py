"""Wake workers for queued jobs: after a create or retry commits, and from the sweeper.

Workers live in an outer layer; this module reaches them only through the task-name port
``tuninglab.dispatch``. A wake-up is interchangeable with any other of its queue (the worker
claims the best eligible job, ``workers.scheduling``), so ``dispatch_pending`` only tops up
the number of pending messages to the number of jobs that could start.
"""

from __future__ import annotations

import logging

from tuninglab import dispatch
from tuninglab.celery import QUEUE_NAMES
from tunings.selectors.queue import eligible_count, queued_jobs, queues_with_queued_jobs

log = logging.getLogger(__name__)

# Upper bound of wake-ups one ``dispatch_pending`` call sends per queue.
MAX_WAKEUPS_PER_CALL = 50


def dispatch_job(job_id: str, queue: str) -> None:
    """Send the job's wake-up; call it from ``transaction.on_commit`` so a worker never sees an
    uncommitted row. Never raises: if the broker is down the job stays ``queued`` for the sweeper."""
    dispatch.dispatch_tuning_job(job_id, queue)


def dispatch_pending(queue: str | None = None) -> int:
    """Give every queued job that could start now a wake-up, minus those already pending.

    Called by the sweeper and after each finished job (a freed per-user slot can make a
    queued job eligible whose wake-up was consumed while its owner was at the limit).
    Returns how many wake-ups were sent.
    """
    queues = [queue] if queue else sorted(set(QUEUE_NAMES) | queues_with_queued_jobs())
    sent = 0
    for q in queues:
        missing = min(MAX_WAKEUPS_PER_CALL, eligible_count(q) - dispatch.pending_wakeups(q))
        if missing <= 0:
            continue
        # Any id of the queue works (wake-ups are interchangeable); the first ones read best in logs.
        for job_id in queued_jobs(q).values_list("id", flat=True)[:missing]:
            dispatch.dispatch_tuning_job(job_id, q)
            sent += 1
    return sent
