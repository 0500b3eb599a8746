"""Distributed jobs end to end: API → Redis → real ``celery worker`` → torchrun / deepspeed → 2 ranks.

The same data, seed and hyperparameters as a single-process job (dropout 0): the FSDP job and the
DeepSpeed ZeRO-3 job end with the single-process job's adapter (within 1e-5: the engines sum in
another order), and killing one ZeRO-3 rank mid-run makes the job resume from its last sharded
checkpoint in attempt 2 and still end with that adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

from registry.models import ModelVersion
from tests.helpers import training_rank_pid
from tests.integration.test_job_execution import (
    attempt_starts,
    child_pids,
    create_job,
    identity_bytes,
    job,
    load_tensors,
    upload,
    wait_for,
    wait_terminal,
)
from tunings.models import Checkpoint, JobEvent, TuningJob
from workers.job_config import job_paths

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(600)]

Status = TuningJob.Status
HP = {"max_steps": 6, "batch_size": 4, "checkpoint_every": 2}
LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
ADAPTER_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _allow_test_hooks(settings):
    """The kill test slows the ranks down with ``step_delay_s`` to kill one mid-run."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "ALLOW_TEST_HOOKS": True}


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def adapter_of(job_id: str) -> dict[str, Any]:
    return load_tensors(ModelVersion.objects.get(job_id=job_id).adapter_path)


def test_fsdp_and_zero3_jobs_end_with_the_single_process_adapter_and_a_killed_rank_resumes(
    live_stack, base_model, api_client, start_worker
):
    # Beat runs the sweeper, which re-queues the attempt that lost a rank and wakes a worker for it.
    start_worker("w-dist", beat=True)
    file_id = upload(api_client, identity_bytes())
    reference = create_job(api_client, file_id, hp=HP, lora=LORA, suffix="single")["id"]
    fsdp = create_job(
        api_client, file_id, hp=HP, lora=LORA, suffix="fsdp", distributed={"strategy": "fsdp", "nproc_per_node": 2}
    )["id"]
    killed = create_job(
        api_client,
        file_id,
        hp={**HP, "step_delay_s": 1.0},
        lora=LORA,
        suffix="zero3",
        distributed={"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2},
    )["id"]

    for job_id in (reference, fsdp):
        assert wait_terminal(job_id, timeout=400).status == Status.SUCCEEDED, job(job_id).error
    assert max_diff(adapter_of(fsdp), adapter_of(reference)) <= ADAPTER_TOLERANCE
    shown = api_client.get(f"/v1/tunings/{fsdp}").json()
    assert shown["distributed"]["strategy"] == "fsdp" and shown["launch_config"]["launcher"] == "torchrun"
    assert shown["launch_config"]["world_size"] == 2

    # The ZeRO-3 job: wait for its first (sharded) checkpoint, then kill rank 1.
    wait_for(killed, lambda j: Checkpoint.objects.filter(job_id=j.id).exists(), 400, "no first checkpoint")
    [launcher] = child_pids(killed)
    psutil.Process(training_rank_pid(launcher, 1)).kill()
    final = wait_terminal(killed, timeout=400)
    assert final.status == Status.SUCCEEDED, final.error
    assert final.attempt == 2
    assert [e.data["attempt"] for e in attempt_starts(killed) if e.message.endswith("started.")] == [1, 2]
    messages = list(JobEvent.objects.filter(job_id=killed).order_by("seq").values_list("message", flat=True))
    assert any(m.startswith("Attempt 1 lost a training process") for m in messages), messages
    assert any(m.startswith("resumed from checkpoint step-") for m in messages), messages
    assert any("DeepSpeed config" in m and '"stage": 3' in m for m in messages)
    # Attempt 2 started from attempt 1's sharded checkpoint (ZeRO partitions of both ranks).
    first = job_paths(killed).attempt_dir(1) / "checkpoints"
    by_checkpoint: dict[Path, int] = {}
    for partition in Path(first).rglob("*optim_states.pt"):
        by_checkpoint[partition.parent] = by_checkpoint.get(partition.parent, 0) + 1
    assert by_checkpoint and set(by_checkpoint.values()) == {2}, by_checkpoint
    assert max_diff(adapter_of(killed), adapter_of(reference)) <= ADAPTER_TOLERANCE
    # The saved DeepSpeed config is what the admin shows.
    ds = job(killed).launch_config["deepspeed_config"]
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_micro_batch_size_per_gpu"] == 2
