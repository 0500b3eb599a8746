"""Job execution end to end: API → Redis → real ``celery worker`` → real engine child → PostgreSQL.

Needs ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``; skipped without them, failed under
``CI=true``. Run::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tl_workers REDIS_URL=redis://127.0.0.1:6379/5 \
        .venv/bin/pytest tests/integration
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from registry.models import ModelVersion
from tests.integration.conftest import pid_alive
from tunings.models import Checkpoint, JobEvent, TrainingFile, TuningJob
from workers.job_config import job_paths

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(420)]

Status = TuningJob.Status
ASSETS = Path(__file__).resolve().parents[2] / "lora_engine" / "assets"
TERMINAL = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}


@pytest.fixture(autouse=True)
def _allow_test_hooks(settings):
    """These runs slow the engine down with ``step_delay_s`` to kill or cancel it mid-run."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "ALLOW_TEST_HOOKS": True}


# --- helpers ------------------------------------------------------------------------------


def upload(client: Any, content: bytes, name: str = "identity.jsonl") -> str:
    resp = client.post(
        "/v1/files", {"file": SimpleUploadedFile(name, content), "purpose": "fine-tune"}, format="multipart"
    )
    assert resp.status_code in (200, 201), resp.content
    return resp.json()["id"]


def create_job(client: Any, file_id: str, *, hp: dict[str, Any], seed: int = 7, **extra: Any) -> dict[str, Any]:
    body = {"model": "tiny-llama", "training_file": file_id, "hyperparameters": hp, "seed": seed, **extra}
    resp = client.post("/v1/tunings", body, format="json")
    assert resp.status_code in (200, 201), resp.content
    return resp.json()


def job(job_id: str) -> TuningJob:
    return TuningJob.objects.get(id=job_id)


def wait_for(job_id: str, predicate: Any, timeout: float, what: str) -> TuningJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = job(job_id)
        if predicate(current):
            return current
        time.sleep(0.3)
    current = job(job_id)
    events = "\n".join(f"  {e.message}" for e in JobEvent.objects.filter(job_id=job_id).order_by("seq"))
    raise AssertionError(f"{what}: job {job_id} is {current.status} at step {current.current_step}\n{events}")


def wait_terminal(job_id: str, timeout: float = 240) -> TuningJob:
    return wait_for(job_id, lambda j: j.status in TERMINAL, timeout, "not finished")


def child_pids(job_id: str) -> list[int]:
    return [
        int(d["pid"])
        for d in JobEvent.objects.filter(job_id=job_id, data__has_key="pid")
        .order_by("seq")
        .values_list("data", flat=True)
    ]


def child_starts(job_id: str) -> list[JobEvent]:
    return list(JobEvent.objects.filter(job_id=job_id, data__has_key="pid").order_by("seq"))


def attempt_starts(job_id: str) -> list[JobEvent]:
    return list(JobEvent.objects.filter(job_id=job_id, message__startswith="Attempt ").order_by("seq"))


def load_tensors(adapter_dir: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def identity_bytes() -> bytes:
    return (ASSETS / "identity.jsonl").read_bytes()


# --- scenarios ----------------------------------------------------------------------------


def test_it_runs_a_job_created_through_the_api_to_success(live_stack, base_model, api_client, start_worker):
    start_worker("w-happy")
    file_id = upload(api_client, identity_bytes())
    created = create_job(
        api_client,
        file_id,
        hp={"max_steps": 6, "batch_size": 4, "checkpoint_every": 3, "step_delay_s": 0.4},
        suffix="happy",
    )
    assert created["status"] == "queued"
    job_id = created["id"]

    samples: list[tuple[str, float, Any, int]] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        body = api_client.get(f"/v1/tunings/{job_id}").json()
        samples.append((body["status"], body["progress"], body["loss"], body["current_step"]))
        if body["status"] in TERMINAL:
            break
        time.sleep(0.3)

    final = job(job_id)
    assert final.status == Status.SUCCEEDED, (final.error, samples[-5:])
    statuses = [s[0] for s in samples]
    assert "running" in statuses
    # Progress and loss were visible while the job ran, and progress never went backwards.
    running = [s for s in samples if s[0] == "running" and s[3] > 0]
    assert running, samples
    assert any(0 < p < 100 and loss is not None for _, p, loss, _ in running)
    progresses = [s[1] for s in samples]
    assert progresses == sorted(progresses)

    assert (final.attempt, final.progress, final.current_step) == (1, 100.0, 6)
    assert final.fine_tuned_model.startswith("ft:tiny-llama:alice:happy:")
    mv = ModelVersion.objects.get(job_id=job_id)
    assert mv.version == 1
    assert Path(mv.adapter_path).is_relative_to(Path(live_stack["data_dir"]) / "adapters")
    assert (Path(mv.adapter_path) / "adapter_config.json").is_file()
    assert set(load_tensors(mv.adapter_path))  # real tensors in the stored adapter
    assert sorted(Checkpoint.objects.filter(job_id=job_id).values_list("step", flat=True)) == [
        3
    ]  # the last step writes the adapter
    metric_steps = list(
        JobEvent.objects.filter(job_id=job_id, type=JobEvent.Type.METRICS)
        .order_by("seq")
        .values_list("data__step", flat=True)
    )
    assert metric_steps == [1, 2, 3, 4, 5, 6]


def test_it_resumes_on_another_worker_after_kill_9_with_the_same_result(
    live_stack, base_model, api_client, start_worker
):
    hp = {"max_steps": 8, "batch_size": 4, "checkpoint_every": 2, "step_delay_s": 0.5, "learning_rate_multiplier": 5.0}
    file_id = upload(api_client, identity_bytes())
    w1 = start_worker("w-doomed")
    interrupted = create_job(api_client, file_id, hp=hp, seed=11, suffix="resumed")["id"]

    wait_for(interrupted, lambda j: Checkpoint.objects.filter(job_id=j.id).exists(), 240, "no first checkpoint")
    w1.kill9()
    killed_at = job(interrupted).current_step
    [first_child] = child_pids(interrupted)
    # The training child dies with its worker (PR_SET_PDEATHSIG), it does not train on orphaned.
    deadline = time.monotonic() + 10
    while pid_alive(first_child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(first_child)
    assert job(interrupted).status == Status.RUNNING  # until its lease expires

    # A second worker with beat: the sweeper re-queues the expired lease and wakes a worker.
    start_worker("w-rescue", beat=True)
    reference = create_job(api_client, file_id, hp=hp, seed=11, suffix="reference")["id"]

    a = wait_terminal(interrupted)
    b = wait_terminal(reference)
    assert a.status == Status.SUCCEEDED, a.error
    assert b.status == Status.SUCCEEDED, b.error
    assert a.attempt == 2 and b.attempt == 1
    assert killed_at < 8
    messages = list(JobEvent.objects.filter(job_id=interrupted).order_by("seq").values_list("message", flat=True))
    assert any(m.startswith("Lease of attempt 1 expired") for m in messages)
    assert any(m.startswith("resumed from") for m in messages), messages
    starts = attempt_starts(interrupted)
    assert [e.data["attempt"] for e in starts] == [1, 2]
    assert starts[0].data["worker"] != starts[1].data["worker"]
    # Attempt 2 continued after a checkpoint instead of starting over from step 1.
    resumed_steps = list(
        JobEvent.objects.filter(job_id=interrupted, type=JobEvent.Type.METRICS, seq__gt=starts[1].seq)
        .order_by("seq")
        .values_list("data__step", flat=True)
    )
    checkpoint_steps = set(Checkpoint.objects.filter(job_id=interrupted).values_list("step", flat=True))
    assert resumed_steps[-1] == 8
    assert resumed_steps[0] > 1 and resumed_steps[0] - 1 in checkpoint_steps, resumed_steps
    # ... in a run dir of its own, started from attempt 1's checkpoint (linked in, not shared).
    [second_start] = [e for e in child_starts(interrupted) if e.data["attempt"] == 2]
    assert second_start.data["resume_step"] == resumed_steps[0] - 1
    second_dir = Path(json.loads(job_paths(interrupted).config_file(2).read_text())["output_dir"])
    assert second_dir == job_paths(interrupted).run_dir / "attempt-2"
    # Whatever attempt 2 pruned of its own copies, attempt 1's checkpoint stays where it was.
    assert (second_dir.parent / "attempt-1" / "checkpoints" / f"step-{resumed_steps[0] - 1:06d}").is_dir()

    got = load_tensors(ModelVersion.objects.get(job_id=interrupted).adapter_path)
    want = load_tensors(ModelVersion.objects.get(job_id=reference).adapter_path)
    assert got.keys() == want.keys() and got
    max_diff = max(float((got[k] - want[k]).abs().max()) for k in got)
    assert max_diff <= 1e-6, max_diff


def test_it_ignores_a_redelivery_after_the_visibility_timeout(live_stack, base_model, api_client, start_worker):
    worker = start_worker(
        "w-vt",
        pool="prefork",
        concurrency=2,
        env={
            "TUNINGLAB_VISIBILITY_TIMEOUT": "3",
            "TUNINGLAB_UNACKED_RESTORE_INTERVAL": "1",
            "TUNINGLAB_UNACKED_RESTORE_THROTTLE": "1",
        },
    )
    file_id = upload(api_client, identity_bytes())
    job_id = create_job(api_client, file_id, hp={"max_steps": 5, "batch_size": 4, "step_delay_s": 2.0})["id"]

    final = wait_terminal(job_id)
    assert final.status == Status.SUCCEEDED, final.error
    received = Counter(re.findall(r"Task workers\.tasks\.run_tuning_job\[([0-9a-f-]+)\] received", worker.log()))
    assert received and max(received.values()) >= 2, worker.log()[-3000:]  # the broker did redeliver
    assert "nothing to claim" in worker.log()
    assert final.attempt == 1
    assert len(attempt_starts(job_id)) == 1
    assert len(child_pids(job_id)) == 1  # one training process, one writer


def test_it_cancels_a_queued_job_before_it_starts_and_a_running_one_at_a_step(
    live_stack, base_model, api_client, start_worker, settings
):
    file_id = upload(api_client, identity_bytes())
    queued = create_job(api_client, file_id, hp={"max_steps": 4, "batch_size": 4})["id"]
    resp = api_client.post(f"/v1/tunings/{queued}/cancel")
    assert resp.status_code == 200, resp.content
    assert job(queued).status == Status.CANCELLED

    running = create_job(
        api_client, file_id, hp={"max_steps": 40, "batch_size": 4, "checkpoint_every": 2, "step_delay_s": 0.5}
    )["id"]
    start_worker("w-cancel")
    wait_for(running, lambda j: Checkpoint.objects.filter(job_id=j.id).exists(), 240, "no checkpoint yet")
    asked_at = job(running).current_step
    assert api_client.post(f"/v1/tunings/{running}/cancel").status_code == 200

    final = wait_terminal(running, timeout=60)
    assert final.status == Status.CANCELLED
    assert final.current_step <= asked_at + 3, (asked_at, final.current_step)
    kept = Checkpoint.objects.filter(job_id=running).order_by("-step").first()
    assert kept is not None and Path(kept.path).is_dir()
    assert final.current_step < 40
    assert not any(pid_alive(p) for p in child_pids(running))

    never = job(queued)
    assert (never.status, never.attempt, never.started_at) == (Status.CANCELLED, 0, None)
    assert attempt_starts(queued) == []
    assert not job_paths(queued).job_dir.exists()  # no config, no log: no child ever ran


def test_it_fails_a_job_with_bad_data_and_the_worker_runs_the_next_one(
    live_stack, base_model, api_client, user, start_worker, settings
):
    # A stored file that is broken on line 3 (as if corrupted after its upload was validated).
    good = identity_bytes().splitlines(keepends=True)
    broken = b"".join([*good[:2], b'{"messages": [oops\n', *good[3:]])
    digest = hashlib.sha256(broken).hexdigest()
    rel = Path("files") / f"corrupt-{digest}.jsonl"
    (Path(settings.DATA_DIR) / rel).parent.mkdir(parents=True, exist_ok=True)
    (Path(settings.DATA_DIR) / rel).write_bytes(broken)
    bad_file = TrainingFile.objects.create(
        owner=user,
        filename="broken.jsonl",
        sha256=digest,
        bytes=len(broken),
        storage_path=str(rel),
        format="openai_chat",
        example_count=len(good),
        status=TrainingFile.Status.PROCESSED,
    )
    settings.TUNINGLAB = {**settings.TUNINGLAB, "USER_MAX_PRIORITY": 5}  # the bad job goes first
    bad = create_job(api_client, bad_file.id, hp={"max_steps": 3, "batch_size": 4}, priority=5)["id"]
    ok = create_job(api_client, upload(api_client, identity_bytes()), hp={"max_steps": 3, "batch_size": 4})["id"]
    worker = start_worker("w-sturdy")

    failed = wait_terminal(bad)
    assert failed.status == Status.FAILED
    assert failed.error["code"] == "invalid_training_data"
    assert failed.error["param"] == "train_file:3"
    assert "line 3" in failed.error["message"]
    assert failed.suggestion
    tail = JobEvent.objects.get(job_id=bad, data__has_key="log_tail").data["log_tail"]
    assert tail and any("line 3" in line for line in tail)

    succeeded = wait_terminal(ok)
    assert succeeded.status == Status.SUCCEEDED, succeeded.error
    assert attempt_starts(ok)[0].data["worker"] == attempt_starts(bad)[0].data["worker"]  # same, healthy worker
    assert worker.proc.poll() is None
