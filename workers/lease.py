"""The lease heartbeat: a thread that keeps a running attempt's lease alive.

Every ``HEARTBEAT_SECONDS`` it extends ``lease_until`` with the attempt's fencing token
(``tuning_job_renew_lease``). Two outcomes stop the attempt:

* the renewal UPDATE matches no row: the job is no longer ``running`` with our token (the
  sweeper re-queued it after our lease expired, an operator failed it, ...). Someone else
  may already run it;
* renewals have *failed* (database unreachable) for longer than the lease itself: by now
  the sweeper may have re-queued the job, so we must assume we lost it (self-fencing).

Either way ``on_lost`` runs at once from this thread (the runner kills the child there),
so the child stops even if the runner's own thread is stuck, and the runner then writes
nothing more for this attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connections

from tunings.services.state import tuning_job_renew_lease

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews one attempt's lease until stopped; calls ``on_lost`` once if the lease is lost."""

    def __init__(
        self,
        *,
        job_id: str,
        token: int,
        interval_s: float,
        lease_s: float,
        on_lost: Callable[[], None],
        db_lock: Any = None,
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.job_id = job_id
        self.token = token
        self.interval_s = max(0.05, float(interval_s))
        self.lease_s = float(lease_s)
        self.on_lost = on_lost
        # The runner's thread writes through the same lock, so one attempt never has two
        # statements in flight (SQLite allows one writer; it also keeps the order readable).
        self.db_lock = db_lock or threading.Lock()
        self.lost = threading.Event()
        self._stop_event = threading.Event()
        self.renewals = 0
        self._last_ok = time.monotonic()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval_s):
                if not self.renew_once():
                    break
        finally:
            connections.close_all()  # this thread's connections only

    def renew_once(self) -> bool:
        """One heartbeat. Returns False when the lease is lost (and ``on_lost`` has run)."""
        try:
            with self.db_lock:
                ok = tuning_job_renew_lease(job_id=self.job_id, token=self.token)
        except DatabaseError as exc:
            # A blip is not a lost lease; an outage longer than the lease is.
            log.warning("lease renewal for %s failed: %s", self.job_id, exc)
            connections["default"].close()
            if time.monotonic() - self._last_ok < self.lease_s:
                return True
            log.error("lease of %s not renewed for %.0fs: assuming it is lost", self.job_id, self.lease_s)
            ok = False
        if ok:
            self.renewals += 1
            self._last_ok = time.monotonic()
            return True
        self.mark_lost()
        return False

    def mark_lost(self) -> None:
        """Record the loss and run ``on_lost`` (once), also when the runner noticed first."""
        if self.lost.is_set():
            return
        self.lost.set()
        log.warning("job %s: lease (token %s) lost; stopping the attempt", self.job_id, self.token)
        try:
            self.on_lost()
        except Exception:  # the callback kills a process; never let it kill the heartbeat
            log.exception("on_lost callback failed for %s", self.job_id)
