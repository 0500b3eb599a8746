"""The lease sweep runs on its own queue: a busy training worker does not stop it.

Real PostgreSQL + Redis + ``celery worker`` processes. The only ``cpu`` worker (concurrency 1)
is held by a job whose "training child" sleeps; another job's worker vanished and left it
``running`` with an expired lease. A small worker consuming only ``maintenance`` (with beat)
must re-queue that job within a few sweep periods.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tuninglab_d2 REDIS_URL=redis://127.0.0.1:6379/12 \\
        .venv/bin/pytest tests/integration/test_maintenance_queue.py
"""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from registry.models import BaseModel
from tuninglab.celery import MAINTENANCE_QUEUE, app
from tuninglab.task_names import RUN_TUNING_JOB
from tunings.models import JobEvent, TrainingFile, TuningJob

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

Status = TuningJob.Status
SWEEP_SECONDS = 2  # the workers' TUNINGLAB_SWEEP_SECONDS (tests/integration/conftest.py)
REQUEUE_BOUND_S = 10 * SWEEP_SECONDS


def _make_job(owner: Any, base: BaseModel, data_dir: str, **fields: Any) -> TuningJob:
    content = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]}\n'
    digest = hashlib.sha256(content).hexdigest()
    path = Path(data_dir) / "files" / f"{digest}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    tf = TrainingFile.objects.create(
        owner=owner,
        filename="t.jsonl",
        sha256=digest,
        bytes=len(content),
        storage_path=f"files/{digest}.jsonl",
        format="openai_chat",
        example_count=1,
        status=TrainingFile.Status.PROCESSED,
    )
    return TuningJob.objects.create(
        owner=owner,
        base_model=base,
        training_file=tf,
        resolved_hyperparameters={"max_steps": 3, "batch_size": 1},
        **fields,
    )


def _wait(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


def test_it_sweeps_on_the_maintenance_worker_while_the_training_worker_is_busy(
    live_stack, user, other_user, start_worker, tmp_path
):
    import redis

    redis.Redis.from_url(live_stack["redis_url"]).delete(MAINTENANCE_QUEUE)
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    base = BaseModel.objects.create(name="tiny-llama", path=str(model_dir), architecture="LlamaForCausalLM")
    # A "training child" that holds the worker: whatever its argv, it sleeps (the runner waits for it).
    busy = tmp_path / "busy-python"
    busy.write_text("#!/bin/sh\nexec sleep 600\n")
    busy.chmod(0o755)

    trainer = start_worker("w-train", env={"TUNINGLAB_PYTHON": str(busy)})
    busy_job = _make_job(other_user, base, live_stack["data_dir"], status=Status.QUEUED)
    app.send_task(RUN_TUNING_JOB, args=[busy_job.id], queue="cpu")
    _wait(
        lambda: TuningJob.objects.filter(id=busy_job.id, status=Status.RUNNING).exists(),
        60,
        "the training worker did not claim the busy job",
    )

    lost = _make_job(
        user,
        base,
        live_stack["data_dir"],
        status=Status.RUNNING,
        attempt=1,
        max_attempts=3,
        fencing_token=1,
        lease_owner="vanished-host",
        lease_until=timezone.now() - timedelta(seconds=30),
    )
    maintenance = start_worker("w-maint", queues=MAINTENANCE_QUEUE, beat=True)

    elapsed = _wait(
        lambda: JobEvent.objects.filter(job_id=lost.id, message__startswith="Lease of attempt 1 expired").exists(),
        REQUEUE_BOUND_S,
        f"the lost job was not re-queued\n--- maintenance ---\n{maintenance.log()[-3000:]}",
    )
    print(f"lost job re-queued {elapsed:.1f}s after the maintenance worker was ready")
    lost.refresh_from_db()
    assert lost.status == Status.QUEUED  # its wake-up waits on `cpu`, where the only worker is busy
    assert TuningJob.objects.get(id=busy_job.id).status == Status.RUNNING
    assert trainer.proc.poll() is None
    assert "sweep_expired_leases" in maintenance.log()
