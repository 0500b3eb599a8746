"""The lease heartbeat: a thread that keeps a running attempt's lease alive, and a watchdog.

Every ``HEARTBEAT_SECONDS`` the heartbeat extends ``lease_until`` with the attempt's fencing
token (``tuning_job_renew_lease``). Two outcomes stop the attempt:

* the renewal UPDATE matches no row: the job is no longer ``running`` with our token (the
  sweeper re-queued it after our lease expired, an operator failed it, ...). Someone else
  may already run it;
* no renewal has *succeeded* for (one watchdog tick short of) the lease itself: the sweeper
  may re-queue the job any moment now, so we must assume we lost it (self-fencing).

The second check runs on the watchdog thread, which compares monotonic clocks and never
touches the database or the attempt's ``db_lock``. A renewal that cannot even start (the
runner's thread holds the lock in a hung statement) or that hangs itself (a dead network)
therefore still ends the attempt once the lease is over: the child is killed on our own clock,
not when some database call returns.

Either way ``on_lost`` runs at once, exactly once (the runner kills the child's process group
there), so the child stops even if the runner's own thread is stuck, and the runner then
writes nothing more for this attempt.
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

# How often the watchdog looks at the clock, as a fraction of the lease (bounded below). It
# gives up one tick before the lease ends, so the child is dead by the time the database lets
# the sweeper re-queue the job.
WATCHDOG_TICKS_PER_LEASE = 20
MIN_WATCHDOG_TICK_S = 0.05


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
        # Only the heartbeat takes it; the watchdog never does.
        self.db_lock = db_lock or threading.Lock()
        self.lost = threading.Event()
        self._lost_once = threading.Lock()
        self._stop_event = threading.Event()
        self.renewals = 0
        # Start of the last successful renewal (the claim, at first): the database set
        # lease_until = (its now, which is later) + lease, so our deadline is never later than its.
        self._renewed_at = time.monotonic()
        self._watchdog = threading.Thread(target=self._watch, name=f"lease-watchdog-{job_id}", daemon=True)

    def start(self) -> None:
        super().start()
        self._watchdog.start()

    def stop(self) -> None:
        self._stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self._watchdog.ident is not None:  # started
            self._watchdog.join(timeout)

    @property
    def watchdog_tick_s(self) -> float:
        return max(MIN_WATCHDOG_TICK_S, min(self.interval_s, self.lease_s / WATCHDOG_TICKS_PER_LEASE))

    @property
    def seconds_since_renewal(self) -> float:
        return time.monotonic() - self._renewed_at

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval_s):
                if self.lost.is_set() or not self.renew_once():
                    break
        finally:
            connections.close_all()  # this thread's connections only

    def renew_once(self) -> bool:
        """One heartbeat. Returns False when the lease is lost (and ``on_lost`` has run)."""
        started = time.monotonic()
        try:
            with self.db_lock:
                if self.lost.is_set():  # the watchdog gave up while we waited for the lock
                    return False
                ok = tuning_job_renew_lease(job_id=self.job_id, token=self.token)
        except DatabaseError as exc:
            # A blip is not a lost lease; the watchdog decides when it has lasted too long.
            log.warning("lease renewal for %s failed: %s", self.job_id, exc)
            connections["default"].close()
            return not self.lost.is_set()
        if not ok:
            self.mark_lost()
            return False
        if self.lost.is_set():
            # The watchdog gave up while this renewal waited: the child is dead already, and a
            # renewed lease would only delay the re-queue.
            return False
        self.renewals += 1
        self._renewed_at = started
        return True

    def _watch(self) -> None:
        """Kill the attempt once no renewal succeeded for a whole lease (no database, no lock)."""
        tick = self.watchdog_tick_s
        while not self._stop_event.wait(tick):
            if self.lost.is_set():
                return
            if self.seconds_since_renewal >= self.lease_s - tick:
                log.error(
                    "lease of %s not renewed for %.1fs (lease %.1fs): assuming it is lost",
                    self.job_id,
                    self.seconds_since_renewal,
                    self.lease_s,
                )
                self.mark_lost()
                return

    def mark_lost(self) -> None:
        """Record the loss and run ``on_lost`` (once), also when the runner noticed first."""
        with self._lost_once:
            if self.lost.is_set():
                return
            self.lost.set()
        log.warning("job %s: lease (token %s) lost; stopping the attempt", self.job_id, self.token)
        try:
            self.on_lost()
        except Exception:  # the callback kills a process; never let it kill the heartbeat
            log.exception("on_lost callback failed for %s", self.job_id)
