"""Send work to a worker: a Celery message on the job's queue, or the in-process worker.

The jobs service calls ``dispatch_tuning_job(job_id, queue)`` after the job's transaction
commits. A message is a *wake-up* for its queue (see ``workers.scheduling``): duplicates and
redeliveries are harmless, a lost one is replaced by the sweeper (``dispatch_pending``).
"""

from __future__ import annotations

import logging

from django.conf import settings

from tuninglab.celery import QUEUE_NAMES
from workers import scheduling

log = logging.getLogger(__name__)

# Upper bound of wake-ups one ``dispatch_pending`` call sends per queue.
MAX_WAKEUPS_PER_CALL = 50


def dispatch_tuning_job(job_id: str, queue: str = "cpu") -> None:
    """Wake a worker of ``queue`` for ``job_id``. Never raises: the job row is the truth.

    If the broker is down the job stays ``queued`` and the next sweep dispatches it.
    """
    try:
        if settings.TUNINGLAB_INPROCESS_WORKER:
            from workers import inprocess

            inprocess.submit(job_id, queue)
            return
        from workers.tasks import run_tuning_job

        run_tuning_job.apply_async(args=[job_id], queue=queue)
    except Exception:
        log.exception("could not dispatch job %s to %s; the sweeper will retry", job_id, queue)


def pending_wakeups(queue: str) -> int:
    """Messages waiting (not yet taken by a worker) on ``queue``; 0 when unknown."""
    if settings.TUNINGLAB_INPROCESS_WORKER:
        from workers import inprocess

        return inprocess.pending()
    from tuninglab.celery import app

    try:
        with app.connection_for_read() as conn:
            _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
            return int(count)
    except Exception:
        # Redis reports a queue with no messages as missing: nothing pending.
        return 0


def dispatch_pending(queue: str | None = None) -> int:
    """Give every queued job that could start now a wake-up, minus those already pending.

    Called by the sweeper and after each finished job (a freed per-user slot can make a
    queued job eligible whose wake-up was consumed while its owner was at the limit).
    Returns how many wake-ups were sent.
    """
    from tunings.models import TuningJob

    queues = (
        [queue]
        if queue
        else sorted(
            set(QUEUE_NAMES)
            | set(TuningJob.objects.filter(status=TuningJob.Status.QUEUED).values_list("queue", flat=True).distinct())
        )
    )
    sent = 0
    for q in queues:
        missing = min(MAX_WAKEUPS_PER_CALL, scheduling.eligible_count(q) - pending_wakeups(q))
        if missing <= 0:
            continue
        # Any id of the queue works (wake-ups are interchangeable); the first ones read best in logs.
        ids = list(scheduling.queued_jobs(q).values_list("id", flat=True)[:missing])
        for job_id in ids:
            dispatch_tuning_job(job_id, q)
            sent += 1
    return sent
