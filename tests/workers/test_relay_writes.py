"""The relay's write load: progress UPDATEs rate-limited, metrics events batched, none lost;
checkpoint rows follow the engine's pruning."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

import workers.fencing
import workers.relay
from lora_engine import protocol
from tunings.models import Checkpoint, JobEvent, TuningJob
from workers.fencing import FencedWriter
from workers.relay import LineRelay
from workers.runner import run_job

pytestmark = pytest.mark.django_db

TOKEN = 4


class FakeClock:
    """A monotonic clock the test moves by hand: no timed assertions."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def running_job(make_job, user):
    return make_job(user, status=TuningJob.Status.RUNNING, fencing_token=TOKEN)


def relay_for(job, *, interval: float = 1.0, clock=None) -> LineRelay:
    writer = FencedWriter(job_id=job.id, token=TOKEN, on_lost=lambda: None)
    return LineRelay(writer, write_interval_s=interval, clock=clock or FakeClock())


def metrics(step: int, total: int, **extra) -> protocol.Line:
    obj = {
        "type": "metrics",
        "step": step,
        "total_steps": total,
        "progress": round(100.0 * step / total, 2),
        "loss": 2.0 - step / total,
        "trained_tokens": 10 * step,
        **extra,
    }
    return protocol.Line(raw="", obj=obj)


def line(**obj) -> protocol.Line:
    return protocol.Line(raw="", obj=obj)


def progress_updates(ctx: CaptureQueriesContext) -> int:
    return sum(1 for q in ctx.captured_queries if q["sql"].startswith('UPDATE "tunings_tuningjob"'))


def test_it_writes_progress_at_most_once_a_second_over_1000_fast_steps_and_ends_at_100(running_job):
    clock = FakeClock()
    relay = relay_for(running_job, interval=1.0, clock=clock)
    with CaptureQueriesContext(connection) as ctx:
        for step in range(1, 1001):
            relay.handle(metrics(step, 1000))
            clock.now += 0.01  # 1,000 steps in 10 s

    # One write per elapsed second (the first line writes at once) plus the last step's.
    assert progress_updates(ctx) <= 12
    assert relay.progress_writes == progress_updates(ctx)
    job = TuningJob.objects.get(id=running_job.id)
    assert (job.progress, job.current_step, job.total_steps, job.trained_tokens) == (100.0, 1000, 1000, 10_000)
    # Every step still has its point on the loss curve, in order, in a handful of INSERTs.
    steps = list(
        JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS)
        .order_by("seq")
        .values_list("data__step", flat=True)
    )
    assert steps == list(range(1, 1001))
    inserts = sum(1 for q in ctx.captured_queries if q["sql"].startswith('INSERT INTO "tunings_jobevent"'))
    assert inserts <= 12


def test_it_writes_an_eval_line_at_once_and_keeps_its_eval_loss(running_job):
    relay = relay_for(running_job, interval=60.0)
    relay.handle(metrics(1, 100))  # the first line writes at once
    relay.handle(metrics(2, 100))
    assert TuningJob.objects.get(id=running_job.id).current_step == 1  # step 2 is buffered

    relay.handle(metrics(3, 100, eval_loss=0.75))
    relay.handle(metrics(4, 100))  # buffered again; its null eval_loss must not clear 0.75
    job = TuningJob.objects.get(id=running_job.id)
    assert (job.current_step, job.eval_loss) == (3, 0.75)
    assert JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS).count() == 3


def test_it_flushes_buffered_metrics_before_any_other_line_so_events_keep_their_order(running_job, tmp_path):
    relay = relay_for(running_job, interval=60.0)
    for step in (1, 2, 3):
        relay.handle(metrics(step, 10))
    relay.handle(line(type="message", level="info", message="hello"))
    relay.handle(metrics(4, 10))
    relay.handle(line(type="stopped", step=4, checkpoint=None))

    job = TuningJob.objects.get(id=running_job.id)
    assert job.current_step == 4
    messages = list(JobEvent.objects.filter(job=job).order_by("seq").values_list("message", flat=True))
    assert [m.split(":")[0] for m in messages] == ["Step 1/10", "Step 2/10", "Step 3/10", "hello", "Step 4/10"]
    assert relay.stopped_line == {"type": "stopped", "step": 4, "checkpoint": None}


def test_it_flushes_on_tick_once_the_interval_passed(running_job):
    clock = FakeClock()
    relay = relay_for(running_job, interval=2.0, clock=clock)
    relay.handle(metrics(1, 100))
    relay.handle(metrics(2, 100))
    relay.tick()
    assert TuningJob.objects.get(id=running_job.id).current_step == 1
    clock.now += 2.0
    relay.tick()
    assert TuningJob.objects.get(id=running_job.id).current_step == 2


def test_it_deletes_the_rows_of_checkpoints_the_engine_pruned(running_job, tmp_path):
    relay = relay_for(running_job)
    root = tmp_path / "checkpoints"

    def engine_saves(step: int, *, prunes: int | None = None) -> None:
        (root / f"step-{step}").mkdir(parents=True)
        if prunes is not None:  # keep_checkpoints=2: the oldest goes after the newest is complete
            (root / f"step-{prunes}").rmdir()
        relay.handle(line(type="checkpoint", step=step, path=str(root / f"step-{step}"), metrics={}))

    engine_saves(10)
    engine_saves(20)
    engine_saves(30, prunes=10)
    engine_saves(40, prunes=20)

    assert sorted(Checkpoint.objects.filter(job=running_job).values_list("step", flat=True)) == [30, 40]
    # The event history still says a checkpoint was saved at every step.
    assert JobEvent.objects.filter(job=running_job, message__startswith="Checkpoint saved").count() == 4


def test_it_keeps_the_done_line_when_the_write_before_it_fails(running_job, monkeypatch):
    relay = relay_for(running_job, interval=60.0)
    relay.handle(metrics(1, 2))
    relay.handle(metrics(2, 3))  # buffered

    def outage(**kwargs):
        raise DatabaseError("server closed the connection")

    monkeypatch.setattr(workers.relay, "tuning_job_record_progress", outage)
    monkeypatch.setattr(workers.fencing.time, "sleep", lambda s: None)
    with pytest.raises(DatabaseError):
        relay.handle(line(type="done", adapter_dir="/x", steps=3))
    # The runner settles from the done line; the buffered metrics stay for the next flush.
    assert relay.done_line is not None and relay.done_line["steps"] == 3
    assert relay.pending_fields["current_step"] == 2


@pytest.mark.timeout(60)
def test_a_run_of_1000_fast_steps_makes_a_handful_of_job_updates_and_ends_at_100(fake_engine, make_job, user, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "PROGRESS_WRITE_SECONDS": 3600.0}
    fake_engine([{"train": {"steps": 1000}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    with CaptureQueriesContext(connection) as ctx:
        assert run_job(job.id, worker_id="w1", queue="cpu") == job.id

    job.refresh_from_db()
    assert (job.status, job.progress, job.total_steps) == (TuningJob.Status.SUCCEEDED, 100.0, 1000)
    # The claim, the first and the last step's progress, the success: not one UPDATE per step.
    assert progress_updates(ctx) <= 6, [q["sql"][:120] for q in ctx.captured_queries if "UPDATE" in q["sql"]]
    assert JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS).count() == 1000
