"""Faults around who owns a job: a hung database call, a job that dies every time, the sweeper's
attempt cap, a job that runs out of time.

The scripted fake engine (``tests/workers/data/fake_engine.py``) stands in for training, so each
test takes seconds. A crash between a job's commit and its wake-up being sent is covered by
``tests/faults/test_service_faults.py`` (broker down, real Redis) and
``tests/workers/test_sweeper_and_dispatch.py`` (the sweep sends what is missing).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from psycopg import sql

import workers.relay
from tests.helpers import require_postgres, wait_until
from tests.integration.conftest import live_database_url
from tests.workers.conftest import dispatched, fake_base_model, fake_engine, fast_lease, make_job  # noqa: F401
from tests.workers.test_runner import metrics, pid_alive, pid_of, reload, retry_db, start_runner
from tunings.models import JobEvent, TuningJob
from tunings.services import state
from tunings.services.state import tuning_job_renew_lease, tuning_job_requeue_expired
from workers.job_config import job_paths
from workers.runner import JobRunner, run_job
from workers.sweeper import sweep

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
Status = TuningJob.Status


def tree(root):
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def expire_and_sweep(job: TuningJob) -> list[str]:
    TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
    return sweep().requeued


def test_a_hung_database_call_cannot_keep_the_child_alive_past_the_lease(
    fake_engine,  # noqa: F811
    make_job,  # noqa: F811
    user,
    fast_lease,  # noqa: F811
    monkeypatch,
    capsys,
):
    lease_s, heartbeat_s = fast_lease["LEASE_SECONDS"], fast_lease["HEARTBEAT_SECONDS"]
    fake_engine([{"train": {"steps": 400, "delay": 0.05, "checkpoint_every": 5}}, {"adapter": True}, {"done": True}])
    release = threading.Event()
    hung_at: list[float] = []
    real_record = workers.relay.checkpoint_record

    def hanging_checkpoint_record(**kwargs):
        # From step 10 on the runner's write hangs inside its fenced transaction, holding the
        # attempt's db_lock, as a statement does when the database stops answering.
        if kwargs["step"] >= 10 and not release.is_set():
            hung_at.append(time.monotonic())
            release.wait(60)
        return real_record(**kwargs)

    monkeypatch.setattr(workers.relay, "checkpoint_record", hanging_checkpoint_record)
    job = make_job(user)
    thread, _ = start_runner(job.id)
    assert wait_until(lambda: bool(hung_at), timeout=30)
    pid = pid_of(job)

    # No database call is needed to stop the child: the watchdog does it on its own clock.
    assert wait_until(lambda: not pid_alive(pid), timeout=lease_s * 5, interval=0.02)
    killed_after = time.monotonic() - hung_at[0]
    assert not release.is_set()  # ... while the database call was still hung
    assert killed_after >= lease_s - 2 * heartbeat_s  # and not before the lease could have run out
    with capsys.disabled():
        print(f"\n[measured] child killed {killed_after:.2f}s after the DB call hung (lease {lease_s}s)")
    release.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    first = job_paths(job.id).attempt_dir(1)
    before = tree(first)
    last_step = max(int(p.name.split("-")[1]) for p in (first / "checkpoints").glob("step-*"))

    # The next attempt trains in a dir of its own, started from attempt 1's newest checkpoint.
    assert retry_db(lambda: expire_and_sweep(job)) == [job.id]
    fake_engine([{"train": {"steps": 400}}, {"adapter": True}, {"done": True}])
    assert run_job(job.id, worker_id="w2", queue="cpu") == job.id
    job = reload(job)
    assert (job.status, job.attempt) == (Status.SUCCEEDED, 2), job.error
    second = job_paths(job.id).attempt_dir(2)
    assert json.loads(job_paths(job.id).config_file(1).read_text())["output_dir"] == str(first)
    assert json.loads(job_paths(job.id).config_file(2).read_text())["output_dir"] == str(second)
    started = JobEvent.objects.get(job=job, data__attempt=2, data__has_key="pid")
    assert started.data["resume_step"] == last_step
    assert started.message == f"Training process started (resuming after step {last_step})."
    assert (second / "checkpoints" / f"step-{last_step:06d}").is_dir()
    assert tree(first) == before  # attempt 2 wrote nothing into attempt 1's dir


@pytest.mark.postgres
def test_a_row_lock_that_hangs_every_statement_of_the_attempt_cannot_keep_its_child_alive(
    fake_engine,  # noqa: F811
    make_job,  # noqa: F811
    user,
    fast_lease,  # noqa: F811
    capsys,
):
    require_postgres()
    lease_s = fast_lease["LEASE_SECONDS"]
    fake_engine([{"train": {"steps": 400, "delay": 0.05, "checkpoint_every": 5}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    thread, _ = start_runner(job.id)
    assert wait_until(lambda: reload(job).current_step >= 5, timeout=30)
    pid = pid_of(job)
    # Another session locks the job's row: the runner's fenced writes (SELECT ... FOR UPDATE) and
    # the heartbeat's UPDATE now wait on the server, a real hung statement.
    with psycopg.connect(live_database_url()) as locker:
        table = sql.Identifier(TuningJob._meta.db_table)
        locker.execute(sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(table), [job.id])
        locked_at = time.monotonic()
        assert wait_until(lambda: not pid_alive(pid), timeout=lease_s * 5, interval=0.02)
        killed_after = time.monotonic() - locked_at
        locker.rollback()
    with capsys.disabled():
        print(f"\n[measured] PostgreSQL row lock: child killed {killed_after:.2f}s after the lock (lease {lease_s}s)")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert reload(job).status == Status.RUNNING  # nothing settled: the sweeper re-queues it once the lease lapses
    assert wait_until(lambda: job.id in sweep().requeued, timeout=lease_s * 3)


@pytest.mark.postgres
def test_every_database_call_is_bounded_by_connect_and_statement_timeouts():
    require_postgres()
    options = connection.settings_dict["OPTIONS"]
    assert options["connect_timeout"] == 5
    assert options["keepalives"] == 1
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "30s"
    # What a hung statement becomes: an OperationalError the worker's retries and lease handle.
    with (
        pytest.raises(OperationalError, match="statement timeout"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SET LOCAL statement_timeout = 100")
        cursor.execute("SELECT pg_sleep(5)")


def test_a_job_whose_child_is_oom_killed_fails_at_once_and_is_never_retried(
    fake_engine,  # noqa: F811
    make_job,  # noqa: F811
    user,
):
    fake_engine([{"emit": metrics(1)}, {"kill_self": int(signal.SIGKILL)}])
    job = make_job(user)
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id
    job = reload(job)
    assert (job.status, job.attempt, job.error["code"]) == (Status.FAILED, 1, "out_of_memory")
    assert job.suggestion
    assert sweep().requeued == []
    assert run_job(job.id, worker_id="w1", queue="cpu") is None


def test_a_job_that_takes_its_worker_down_every_time_fails_after_the_attempt_cap(
    make_job,  # noqa: F811
    user,
    monkeypatch,
):
    # The OOM killer takes the worker with its child (PDEATHSIG): nothing is settled, the lease lapses.
    monkeypatch.setattr(JobRunner, "run", lambda self: None)
    job = make_job(user)
    claims = 0
    for _ in range(10):  # a loop would show as more claims than attempts
        if run_job(job.id, worker_id="w1", queue="cpu") is None:
            break
        claims += 1
        TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
        sweep()
    job = reload(job)
    assert claims == job.max_attempts == 3
    assert (job.status, job.error["code"]) == (Status.FAILED, "max_attempts_exceeded")
    assert job.suggestion


def test_the_sweeper_does_not_fail_a_job_at_its_attempt_cap_whose_lease_was_just_renewed(
    make_job,  # noqa: F811
    user,
    monkeypatch,
):
    now = timezone.now()
    lapsed = make_job(user, status=Status.RUNNING, attempt=1, fencing_token=1, lease_until=now - timedelta(seconds=9))
    capped = make_job(user, status=Status.RUNNING, attempt=3, max_attempts=3, fencing_token=3)
    TuningJob.objects.filter(id=capped.id).update(lease_until=now - timedelta(seconds=1))
    real_event_add = state.job_event_add

    def heartbeat_meanwhile(**kwargs):
        # While the sweeper handles the first job, the capped job's worker (back from a database
        # blip) renews its lease: the sweeper read it as expired, but it no longer is.
        tuning_job_renew_lease(job_id=capped.id, token=3)
        return real_event_add(**kwargs)

    monkeypatch.setattr(state, "job_event_add", heartbeat_meanwhile)
    requeued, failed = tuning_job_requeue_expired()
    assert (requeued, failed) == ([lapsed.id], [])
    capped = reload(capped)
    assert (capped.status, capped.error) == (Status.RUNNING, None)
    assert capped.lease_until > timezone.now()


def test_a_job_past_its_time_budget_is_stopped_and_fails_with_timeout(
    fake_engine,  # noqa: F811
    make_job,  # noqa: F811
    user,
    settings,
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "JOB_TIMEOUT_SECONDS": 1}
    fake_engine([{"train": {"steps": 400, "delay": 0.05, "checkpoint_every": 5}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id

    job = reload(job)
    assert (job.status, job.attempt) == (Status.FAILED, 1)
    assert job.error == {
        "code": "timeout",
        "message": "The job ran out of its time: it may run for 1 s from its first start.",
        "param": None,
    }
    assert "TUNINGLAB_JOB_TIMEOUT_SECONDS" in job.suggestion
    assert 0 < job.current_step < 400  # stopped early, at a step boundary (SIGTERM: it checkpointed)
    assert not pid_alive(pid_of(job))
    assert sweep().requeued == []


def test_a_requeued_job_gets_only_what_is_left_of_its_time_budget(
    fake_engine,  # noqa: F811
    make_job,  # noqa: F811
    user,
    settings,
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "JOB_TIMEOUT_SECONDS": 60}
    fake_engine([{"adapter": True}, {"done": True}])
    # Its first attempt started two minutes ago and lost its worker; the re-queue buys no time.
    job = make_job(user, attempt=1, fencing_token=1, started_at=timezone.now() - timedelta(seconds=120))
    assert run_job(job.id, worker_id="w2", queue="cpu") == job.id
    job = reload(job)
    assert (job.status, job.attempt, job.error["code"]) == (Status.FAILED, 2, "timeout")
    assert not (job_paths(job.id).job_dir / "fake.pid").exists()  # no child was started
