"""Fenced writes: every database write of an attempt proves first that the attempt still owns its job.

``FencedWriter.fenced()`` is a transaction that locks the job row *with the attempt's fencing
token still on it*. Once the sweeper re-queued the job (token unchanged until the next claim
bumps it) or another attempt claimed it (token bumped), the lock finds no row, ``on_lost``
runs (the runner kills the child there) and ``LeaseLost`` is raised: no two attempts ever
write the same job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.db import DatabaseError, connections, transaction

from tunings.models import JobEvent, TuningJob
from tunings.services.state import job_event_add

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """This attempt no longer owns the job; stop writing."""


class FencedWriter:
    """Writes for one attempt (``job_id`` + fencing ``token``), serialised with the lease keeper by ``db_lock``."""

    def __init__(self, *, job_id: str, token: int, on_lost: Callable[[], None]) -> None:
        self.job_id = job_id
        self.token = token
        self.on_lost = on_lost
        # The lease keeper thread renews under the same lock: one connection user at a time.
        self.db_lock = threading.Lock()
        self.lost = False

    def mark_lost(self) -> None:
        if not self.lost:
            self.lost = True
            self.on_lost()

    @contextlib.contextmanager
    def fenced(self) -> Iterator[bool]:
        """A transaction in which this attempt provably still owns the job; yields ``cancel_requested``.

        Raises:
            LeaseLost: the row is no longer ``running`` with our token (``on_lost`` has run).
        """
        if self.lost:
            raise LeaseLost(self.job_id)
        with self.db_lock, transaction.atomic():
            row = list(
                TuningJob.objects.select_for_update()
                .filter(id=self.job_id, status=TuningJob.Status.RUNNING, fencing_token=self.token)
                .values_list("cancel_requested", flat=True)[:1]
            )
            if not row:
                self.mark_lost()
                raise LeaseLost(self.job_id)
            yield bool(row[0])

    def retry(self, fn: Callable[[], Any], *, attempts: int = 5, what: str = "write") -> Any:
        """Run ``fn`` again after transient database errors (SQLite busy, a dropped PG connection)."""
        for i in range(attempts):
            try:
                return fn()
            except LeaseLost:
                raise
            except DatabaseError as exc:
                if i == attempts - 1:
                    raise
                log.warning("job %s: %s failed (%s); retrying", self.job_id, what, exc)
                connections["default"].close()
                time.sleep(0.2 * (i + 1))
        return None

    def event(self, message: str, *, level: str = JobEvent.Level.INFO, data: dict[str, Any] | None = None) -> None:
        """Append a job event, fenced and retried."""

        def write() -> None:
            with self.fenced():
                job_event_add(job_id=self.job_id, message=message, level=level, data=data)

        self.retry(write, what="event")
