"""The lease sweeper: re-queue jobs whose worker vanished, re-dispatch stranded jobs, and clear
evaluations whose worker vanished.

Runs on Celery beat (``workers.tasks.sweep_expired_leases``), in the in-process worker's
idle loop, and from code/tests (``sweep()``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from registry.services.evaluations import evaluation_runs_sweep
from tunings.services.dispatch import dispatch_pending
from tunings.services.state import tuning_job_requeue_expired

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    requeued: list[str]
    failed: list[str]
    dispatched: int
    evaluations_failed: list[str] = field(default_factory=list)
    evaluations_resent: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep(*, now: Any = None) -> SweepResult:
    """Expired leases → ``queued`` (or ``failed`` past the attempt cap), then wake-ups.

    A re-queued job resumes from its newest complete checkpoint on its next attempt (which
    links it into a run dir of its own). A job at its attempt cap fails only while its lease
    is still expired: a worker that renewed meanwhile keeps it. ``dispatch_pending`` also
    covers jobs that wait for no message at all: the broker lost it, or their owner's limit
    freed up.
    """
    requeued, failed = tuning_job_requeue_expired(now=now)
    dispatched = dispatch_pending()
    # Evaluations have no lease: lost ones are failed after a timeout, lost messages re-sent.
    runs = evaluation_runs_sweep(now=now)
    if requeued or failed or dispatched or runs.failed or runs.resent:
        log.info(
            "sweep: requeued=%s failed=%s dispatched=%s evaluations failed=%s resent=%s",
            requeued,
            failed,
            dispatched,
            runs.failed,
            runs.resent,
        )
    return SweepResult(
        requeued=requeued,
        failed=failed,
        dispatched=dispatched,
        evaluations_failed=runs.failed,
        evaluations_resent=runs.resent,
    )
