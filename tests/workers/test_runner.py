"""The runner against a scripted fake child: relay, failures, cancel, fencing, duplicates."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from django.db import OperationalError, connections
from django.db.models import F

import workers.runner
from registry.models import Alias, ModelVersion
from tests.helpers import wait_until
from tunings.models import Checkpoint, JobEvent, TuningJob
from tunings.services.state import tuning_job_cancel
from workers.job_config import build_train_config, job_paths
from workers.runner import run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def metrics(step: int, total: int = 3, loss: float = 1.0) -> dict:
    return {
        "type": "metrics",
        "step": step,
        "total_steps": total,
        "epoch": step / total,
        "loss": loss,
        "lr": 1e-4,
        "grad_norm": 0.5,
        "tokens_per_s": 250.0,
        "trained_tokens": 40 * step,
        "progress": 100.0 * step / total,
        "eta_s": 2.0 * (total - step),
        "eval_loss": None,
    }


def retry_db(fn, tries: int = 20):
    """The test thread and the runner thread share an in-memory SQLite DB: retry a locked table."""
    for i in range(tries):
        try:
            return fn()
        except OperationalError:
            if i == tries - 1:
                raise
            time.sleep(0.05)
    return None


def reload(job: TuningJob) -> TuningJob:
    return retry_db(lambda: TuningJob.objects.get(id=job.id))


def start_runner(job_id: str, worker: str = "w1") -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["ran"] = run_job(job_id, worker_id=worker, queue="cpu")
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def pid_of(job: TuningJob) -> int:
    return int((job_paths(job.id).job_dir / "fake.pid").read_text())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_it_registers_a_full_fine_tune_as_a_full_weights_version(fake_engine, make_job, user, settings):
    # A full fine-tune trains to the end and must register (kind "full"), not fail for lack of adapter files.
    fake_engine([{"train": {"steps": 2}}, {"full_model": True}, {"done": True}])
    job = make_job(user, method="full", lora_rank=8, target_modules=[], suffix="everything")
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id
    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error
    mv = ModelVersion.objects.get(job=job)
    assert (mv.kind, mv.name, mv.version) == ("full", "everything", 1)
    assert (Path(mv.adapter_path) / "model.safetensors").read_bytes() == b"fake-full-weights"
    assert mv.lineage["method"] == "full" and mv.lineage["lora"] is None


def test_it_relays_metrics_messages_checkpoints_and_stores_the_adapter(fake_engine, make_job, user, settings, tmp_path):
    # The relay keeps rows of checkpoint dirs that exist (it drops the ones the engine pruned).
    ckpt_dir = tmp_path / "x" / "step-000002"
    ckpt_dir.mkdir(parents=True)
    fake_engine(
        [
            {"emit": {"type": "message", "level": "info", "message": "Loaded 40 examples."}},
            {"emit": metrics(1, loss=2.0)},
            {"emit": metrics(1, loss=2.0)},  # repeated step: no second metrics event
            {"stdout": "a stray print from some library"},
            {"emit": metrics(2, loss=1.5)},
            {"emit": {"type": "checkpoint", "step": 2, "path": str(ckpt_dir), "metrics": {"loss": 1.5}}},
            {"emit": {"type": "checkpoint", "step": 2, "path": str(ckpt_dir), "metrics": {"loss": 1.5}}},
            {"emit": {**metrics(3, loss=1.2), "eval_loss": 1.4}},
            {"adapter": True},
            {"done": True},
        ]
    )
    job = make_job(user, suffix="demo")
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id

    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error
    assert job.attempt == 1
    assert job.progress == 100.0
    assert (job.current_step, job.total_steps) == (3, 3)
    assert job.current_loss == 0.5  # the done line's final_loss
    assert job.eval_loss == 1.4
    assert job.learning_rate == 1e-4
    assert job.tokens_per_second == 250.0
    assert job.trained_tokens == 30
    assert job.fine_tuned_model.startswith("ft:tiny-llama:alice:demo:")
    assert job.lease_until is None

    events = list(JobEvent.objects.filter(job=job).order_by("seq"))
    metric_steps = [e.data["step"] for e in events if e.type == JobEvent.Type.METRICS]
    assert metric_steps == [1, 2, 3]
    messages = [e.message for e in events if e.type == JobEvent.Type.MESSAGE]
    assert "Loaded 40 examples." in messages
    assert any("a stray print" in m for m in messages)
    assert list(Checkpoint.objects.filter(job=job).values_list("step", flat=True)) == [2]

    mv = ModelVersion.objects.get(job=job)
    # The job's suffix names the owner's registered model; directories are per owner id.
    assert (mv.name, mv.version, mv.owner_id) == ("demo", 1, user.id)
    assert Path(mv.adapter_path) == Path(settings.DATA_DIR) / "adapters" / str(user.id) / "demo" / "v1"
    assert (Path(mv.adapter_path) / "adapter_model.safetensors").read_bytes() == b"fake-weights"
    assert mv.metrics["final_loss"] == 0.5


def test_it_fails_with_the_engines_code_suggestion_and_the_log_tail(fake_engine, make_job, user):
    fake_engine(
        [
            {"stderr": "Traceback (most recent call last):"},
            {"stderr": "RuntimeError: out of memory at step 1"},
            {
                "emit": {
                    "type": "error",
                    "code": "out_of_memory",
                    "message": "Ran out of memory at step 1.",
                    "param": "batch_size",
                    "suggestion": "lower batch_size or rank",
                    "step": 1,
                }
            },
            {"exit": 1},
        ]
    )
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error == {"code": "out_of_memory", "message": "Ran out of memory at step 1.", "param": "batch_size"}
    assert job.suggestion == "lower batch_size or rank"
    tail = JobEvent.objects.get(job=job, data__has_key="log_tail").data["log_tail"]
    assert tail[-1] == "RuntimeError: out of memory at step 1"


def test_it_fails_with_internal_error_when_the_child_exits_without_a_final_line(fake_engine, make_job, user):
    fake_engine([{"emit": metrics(1)}, {"stderr": "Segmentation fault (core dumped)"}, {"exit": 0}])
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "internal_error"
    assert "without a final status line" in job.error["message"]
    assert job.suggestion
    assert (
        "Segmentation fault (core dumped)" in JobEvent.objects.get(job=job, data__has_key="log_tail").data["log_tail"]
    )


def test_it_fails_a_job_whose_child_was_killed_by_a_signal_we_did_not_send(fake_engine, make_job, user):
    fake_engine([{"emit": metrics(1)}, {"kill_self": int(signal.SIGKILL)}])
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "out_of_memory"
    assert "SIGKILL" in job.error["message"]


def test_it_fails_before_spawning_when_the_base_model_dir_is_gone(fake_engine, make_job, user, fake_base_model):
    fake_engine([{"done": True}])
    fake_base_model.path = "/nonexistent/model"
    fake_base_model.save()
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "base_model_missing"
    assert job.error["param"] == "base_model"
    assert job.suggestion
    assert not (job_paths(job.id).job_dir / "fake.pid").exists()  # no child ever ran


def test_it_fails_with_invalid_config_and_the_field_before_spawning(fake_engine, make_job, user):
    fake_engine([{"done": True}])
    job = make_job(user, hyperparameters={"learning_rate": -1})
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error == {"code": "invalid_config", "message": "learning_rate must be > 0", "param": "learning_rate"}


def test_it_stops_the_child_via_the_stop_file_and_marks_the_job_cancelled(fake_engine, make_job, user):
    fake_engine([{"train": {"steps": 400, "delay": 0.05, "checkpoint_every": 5}}, {"done": True}])
    job = make_job(user)
    thread, result = start_runner(job.id)
    assert wait_until(lambda: reload(job).current_step >= 6, timeout=30)
    retry_db(lambda: tuning_job_cancel(job=reload(job)))
    asked_at_step = reload(job).current_step
    thread.join(timeout=30)
    assert not thread.is_alive()

    job = reload(job)
    assert job.status == TuningJob.Status.CANCELLED
    assert job_paths(job.id).stop_file.exists()
    # Stopped at a step boundary shortly after the request (polled every 0.5 s = ~10 steps).
    assert asked_at_step <= job.current_step <= asked_at_step + 25
    steps = list(Checkpoint.objects.filter(job=job).order_by("step").values_list("step", flat=True))
    assert steps[0] == 5 and steps[-1] == job.current_step  # the stop checkpoint is kept
    assert not pid_alive(pid_of(job))
    assert result["ran"] == job.id


def test_it_does_not_run_a_job_twice_for_duplicate_messages(fake_engine, make_job, user):
    fake_engine([{"train": {"steps": 20, "delay": 0.05}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    thread, result = start_runner(job.id, worker="w1")
    assert wait_until(lambda: reload(job).status == TuningJob.Status.RUNNING, timeout=20)
    # A redelivered / duplicate message while it runs, then another one after it finished.
    assert run_job(job.id, worker_id="w2", queue="cpu") is None
    thread.join(timeout=30)
    assert run_job(job.id, worker_id="w3", queue="cpu") is None

    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED
    assert job.attempt == 1
    assert result["ran"] == job.id
    starts = JobEvent.objects.filter(job=job, message__startswith="Attempt ")
    assert [e.data["worker"] for e in starts] == ["w1"]
    assert ModelVersion.objects.filter(job=job).count() == 1


def test_it_kills_the_child_and_writes_nothing_once_the_lease_is_lost(fake_engine, make_job, user, fast_lease):
    fake_engine([{"train": {"steps": 400, "delay": 0.05}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    thread, _ = start_runner(job.id)
    assert wait_until(lambda: reload(job).current_step >= 3, timeout=30)
    # Another attempt took the job (as after an expired lease + re-claim): new token.
    retry_db(
        lambda: TuningJob.objects.filter(id=job.id).update(
            fencing_token=F("fencing_token") + 1, lease_owner="w-other", progress=-1.0, current_step=0
        )
    )
    events_before = retry_db(lambda: JobEvent.objects.filter(job=job).count())
    thread.join(timeout=20)
    assert not thread.is_alive()

    job = reload(job)
    assert not pid_alive(pid_of(job))
    assert job.status == TuningJob.Status.RUNNING  # untouched: the other attempt owns it
    assert (job.progress, job.current_step, job.lease_owner) == (-1.0, 0, "w-other")
    assert JobEvent.objects.filter(job=job).count() == events_before
    assert not ModelVersion.objects.filter(job=job).exists()


def test_it_requeues_a_child_that_stopped_without_a_cancel(fake_engine, make_job, user, dispatched):
    fake_engine(
        [
            {"emit": metrics(1)},
            {"emit": {"type": "stopped", "step": 1, "checkpoint": "/x/step-000001"}},
            {"exit": 3},
        ]
    )
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.QUEUED
    assert job.attempt == 1
    assert dispatched == [(job.id, "cpu")]  # woken up once, to resume


def test_it_fails_with_disk_full_when_the_config_cannot_be_written(fake_engine, make_job, user, monkeypatch):
    import errno

    from lora_engine.config import TrainConfig

    def no_space(self, path=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_engine([{"done": True}])
    monkeypatch.setattr(TrainConfig, "to_json", no_space)
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "disk_full"
    assert "space" in job.suggestion


def test_it_fails_the_job_and_stays_healthy_when_the_worker_itself_breaks(fake_engine, make_job, user, monkeypatch):
    def broken(job, *, attempt=None):
        raise RuntimeError("bug in the mapping")

    monkeypatch.setattr("workers.runner.build_train_config", broken)
    fake_engine([{"adapter": True}, {"done": True}])
    bad, good = make_job(user, priority=1), make_job(user)
    assert run_job(bad.id, worker_id="w1", queue="cpu") == bad.id
    bad.refresh_from_db()
    assert bad.status == TuningJob.Status.FAILED
    assert bad.error["code"] == "internal_error"
    assert "bug in the mapping" in bad.error["message"]

    monkeypatch.setattr("workers.runner.build_train_config", build_train_config)  # fixed: next job
    assert run_job(good.id, worker_id="w1", queue="cpu") == good.id
    good.refresh_from_db()
    assert good.status == TuningJob.Status.SUCCEEDED


def test_it_retries_a_failed_success_write_with_the_same_files(fake_engine, make_job, user, settings, monkeypatch):
    # The first commit of the success fails after the version dir was renamed into place: the
    # retry must take the files back, register exactly one version, and leave no staging copy.
    real_succeed = workers.runner.tuning_job_succeed
    calls = {"n": 0}

    def flaky_succeed(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("database is locked")
        return real_succeed(**kwargs)

    monkeypatch.setattr(workers.runner, "tuning_job_succeed", flaky_succeed)
    fake_engine([{"train": {"steps": 2}}, {"adapter": True}, {"done": True}])
    job = make_job(user, suffix="retry")
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error
    assert calls["n"] == 2
    mv = ModelVersion.objects.get(job=job)
    assert (Path(mv.adapter_path) / "adapter_model.safetensors").read_bytes() == b"fake-weights"
    root = Path(mv.adapter_path).parent
    assert sorted(p.name for p in root.iterdir()) == ["v1"]  # no staging or orphan dirs


def test_a_promote_to_the_serving_check_refuses_leaves_the_alias_and_the_job_succeeds(fake_engine, make_job, user):
    fake_engine([{"emit": metrics(1)}, {"adapter": True}, {"done": True}])  # the fake's weights are not safetensors
    job = make_job(user, suffix="demo", promote_to="production")
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id

    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error
    assert not Alias.objects.exists()
    warning = JobEvent.objects.get(job=job, level=JobEvent.Level.WARNING)
    assert warning.message.startswith("demo v1 was not promoted to production: ")
    assert warning.data == {
        "model_version": ModelVersion.objects.get(job=job).id,
        "alias": "production",
        "code": "version_not_servable",
    }
