"""The lease keeper's watchdog: it ends an attempt on its own clock, whatever the database does."""

from __future__ import annotations

import threading
import time

from workers.lease import LeaseKeeper


def test_it_calls_on_lost_once_the_lease_is_over_while_the_renewal_waits_on_a_hung_call():
    db_lock = threading.Lock()
    db_lock.acquire()  # the runner's thread holds it, stuck in a database call that never returns
    calls: list[float] = []
    lost = threading.Event()

    def on_lost() -> None:
        calls.append(time.monotonic())
        lost.set()

    keeper = LeaseKeeper(job_id="ftjob-x", token=1, interval_s=0.1, lease_s=0.5, on_lost=on_lost, db_lock=db_lock)
    started = time.monotonic()
    keeper.start()
    try:
        assert lost.wait(10)
        # Not before the lease is (one watchdog tick from being) over.
        assert calls[0] - started >= 0.5 - keeper.watchdog_tick_s
        assert keeper.renewals == 0 and db_lock.locked()  # the call is still hung
    finally:
        db_lock.release()  # the heartbeat then finds the attempt lost and renews nothing
        keeper.stop()
        keeper.join(5)
    assert not keeper.is_alive()
    assert keeper.renewals == 0
    keeper.mark_lost()  # the runner noticing too changes nothing
    assert len(calls) == 1
