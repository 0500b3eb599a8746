"""Faults while a checkpoint is written: a kill mid-write, a lease lost mid-write, a full disk.

The real engine on the tiny model, with one fault injected by ``data/faulty_engine.py``. What
must hold: a torn checkpoint is never listed, the previous one stays intact and is the one
resumed, the resumed adapter is bitwise the uninterrupted run's, and a full disk fails the job
with ``disk_full`` (not a retry loop, not a corrupt checkpoint marked complete).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.utils import timezone
from safetensors import SafetensorError
from safetensors.torch import load_file

import workers.child
from lora_engine import checkpoint as ckpt
from lora_engine.errors import DISK_FULL, EngineError
from lora_engine.manifest import is_complete, read_manifest
from registry.models import ModelVersion
from tests.conftest import REPO_ROOT
from tests.helpers import wait_until
from tests.lora_engine.conftest import engine_env, make_config, parse_lines  # noqa: F401 (fixtures)
from tests.workers.conftest import dispatched, fake_base_model, make_job  # noqa: F401 (fixtures)
from tests.workers.test_runner import pid_alive, reload, retry_db, start_runner
from tunings.models import Checkpoint, JobEvent, TuningJob
from workers.job_config import job_paths
from workers.runner import run_job
from workers.sweeper import sweep

FAULTY_ENGINE = Path(__file__).resolve().parent / "data" / "faulty_engine.py"
Status = TuningJob.Status


def run_engine(cfg, tmp_path: Path, name: str, **fault_env: str) -> tuple[int, list[dict], str]:
    """Run the (faulty) engine on ``cfg`` as the worker would; returns (exit code, stdout lines, stderr)."""
    path = tmp_path / f"{name}.json"
    cfg.to_json(path)
    proc = subprocess.run(
        [sys.executable, str(FAULTY_ENGINE), str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**engine_env(), **fault_env},
        timeout=240,
    )
    return proc.returncode, parse_lines(proc.stdout), proc.stderr


def adapter_of(output_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(output_dir) / "adapter" / "adapter_model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def listed_steps(ckpt_root: Path) -> list[int]:
    return [e["step"] for e in read_manifest(ckpt_root)["checkpoints"]]


def losses(lines: list[dict]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in lines if m["type"] == "metrics"}


@pytest.mark.timeout(300)
def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one_and_the_resume_matches(
    make_config,  # noqa: F811 (fixture)
    tmp_path,
):
    common = {"max_steps": 8, "checkpoint_every": 2, "keep_checkpoints": 2, "dropout": 0.1, "seed": 11}
    reference = make_config(output_dir=str(tmp_path / "reference"), **common)
    code, ref_lines, err = run_engine(reference, tmp_path, "reference")
    assert code == 0, err[-2000:]

    # Killed after its step-6 dir was renamed into place, before the manifest listed it.
    unlisted = make_config(output_dir=str(tmp_path / "unlisted"), **common)
    code, _, _ = run_engine(unlisted, tmp_path, "unlisted", FAULT="kill_before_manifest", FAULT_STEP="6")
    root = Path(unlisted.output_dir) / "checkpoints"
    assert code == -signal.SIGKILL
    assert listed_steps(root) == [2, 4]
    assert is_complete(root / "step-000006")  # whole on disk, but unlisted: not a checkpoint
    assert ckpt.latest_checkpoint(root) == root / "step-000004"

    # Killed in the middle of writing step 6's files.
    cfg = make_config(output_dir=str(tmp_path / "run"), **common)
    code, _, _ = run_engine(cfg, tmp_path, "killed", FAULT="kill_mid_write", FAULT_STEP="6")
    root = Path(cfg.output_dir) / "checkpoints"
    assert code == -signal.SIGKILL
    assert listed_steps(root) == [2, 4]  # step 6 never became a checkpoint
    [torn] = root.glob(".step-000006.tmp-*")  # half written, with no RNG state
    assert (torn / "optimizer.pt").exists() and not (torn / ckpt.RNG_FILE).exists()
    assert not (root / "step-000006").exists()
    assert is_complete(root / "step-000004")
    assert ckpt.latest_checkpoint(root) == root / "step-000004"

    code, lines, err = run_engine(cfg.replace(resume=True), tmp_path, "resumed")
    assert code == 0, err[-2000:]
    resumed = [m["message"] for m in lines if m["type"] == "message" and m["message"].startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0].startswith("resumed from checkpoint step-000004 at step 4 "), resumed
    assert losses(lines) == {s: v for s, v in losses(ref_lines).items() if s > 4}
    assert_bitwise_equal(adapter_of(cfg.output_dir), adapter_of(reference.output_dir))


# --- the worker ---------------------------------------------------------------------------


@pytest.fixture
def faulty_engine(monkeypatch):
    """Run ``data/faulty_engine.py`` as the training child; the test sets ``FAULT*`` in the environment."""
    monkeypatch.setattr(workers.child, "train_command", lambda cfg: [sys.executable, str(FAULTY_ENGINE), str(cfg)])
    for name in ("FAULT", "FAULT_STEP", "FAULT_MARKER", "FAULT_FSIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tiny_base_model(fake_base_model, tiny_model_dir):  # noqa: F811 (fixture)
    fake_base_model.path = str(tiny_model_dir)
    fake_base_model.save()
    return fake_base_model


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root``: (inode, size, mtime_ns), to show a directory was left untouched."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


HP = {"max_steps": 8, "batch_size": 4, "checkpoint_every": 2, "learning_rate_multiplier": 5.0}


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_an_attempt_fenced_out_mid_checkpoint_is_killed_and_the_next_resumes_in_its_own_dir(
    faulty_engine,
    make_job,  # noqa: F811 (fixture)
    tiny_base_model,
    user,
    tmp_path,
):
    marker = tmp_path / "paused"
    faulty_engine.setenv("FAULT", "pause_mid_write")
    faulty_engine.setenv("FAULT_STEP", "6")
    faulty_engine.setenv("FAULT_MARKER", str(marker))
    job = make_job(user, hyperparameters=HP, seed=11, suffix="resumed")
    thread, _ = start_runner(job.id, worker="w1")
    assert wait_until(marker.exists, timeout=180)  # the child is inside checkpoint 6's write

    # Its lease expires (as in a database outage on that worker) and the sweeper re-queues the
    # job; the runner finds the job no longer its own and kills the child in mid-write.
    def requeued() -> bool:
        TuningJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timedelta(seconds=1))
        return job.id in sweep().requeued

    assert wait_until(lambda: retry_db(requeued), timeout=30)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert not pid_alive(int(marker.read_text()))

    paths = job_paths(job.id)
    first, second = paths.attempt_dir(1), paths.attempt_dir(2)
    assert listed_steps(first / "checkpoints") == [2, 4]
    assert list((first / "checkpoints").glob(".step-000006.tmp-*"))  # torn, unlisted
    before = tree(first)

    faulty_engine.delenv("FAULT")
    assert run_job(job.id, worker_id="w2", queue="cpu") == job.id
    job = reload(job)
    assert (job.status, job.attempt) == (Status.SUCCEEDED, 2), job.error
    started = JobEvent.objects.filter(job=job, data__has_key="pid").order_by("seq")
    assert [(e.data["attempt"], e.data["resume_step"]) for e in started] == [(1, None), (2, 4)]
    assert json.loads(paths.config_file(2).read_text())["output_dir"] == str(second)
    # Attempt 2 started from attempt 1's checkpoint 4 by hard links, and left attempt 1's dir as it was.
    adopted = second / "checkpoints" / "step-000004" / "trainable.safetensors"
    assert adopted.stat().st_ino == (first / "checkpoints" / "step-000004" / "trainable.safetensors").stat().st_ino
    assert tree(first) == before
    # Its metrics history holds every step once: attempt 1's up to the resumed step, then its own.
    history = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in history if m["type"] == "metrics"] == list(range(1, 9))

    reference = make_job(user, hyperparameters=HP, seed=11, suffix="reference")
    assert run_job(reference.id, worker_id="w3", queue="cpu") == reference.id
    assert reload(reference).status == Status.SUCCEEDED
    assert_bitwise_equal(
        load_file(str(Path(ModelVersion.objects.get(job=job).adapter_path) / "adapter_model.safetensors")),
        load_file(str(Path(ModelVersion.objects.get(job=reference).adapter_path) / "adapter_model.safetensors")),
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_full_disk_while_checkpointing_fails_the_job_with_disk_full_and_lists_no_torn_checkpoint(
    faulty_engine,
    make_job,  # noqa: F811 (fixture)
    tiny_base_model,
    user,
):
    # From checkpoint 4 on no file may grow past 8 KiB: its 15 KB tensors cannot be written.
    faulty_engine.setenv("FAULT", "disk_full")
    faulty_engine.setenv("FAULT_STEP", "4")
    faulty_engine.setenv("FAULT_FSIZE", str(8 * 1024))
    job = make_job(user, hyperparameters={**HP, "max_steps": 6})
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id

    job = reload(job)
    assert (job.status, job.attempt) == (Status.FAILED, 1)
    assert job.error["code"] == "disk_full", job.error
    assert job.error["param"] == "output_dir"
    assert "disk space" in job.suggestion
    root = job_paths(job.id).attempt_dir(1) / "checkpoints"
    assert listed_steps(root) == [2]
    assert is_complete(root / "step-000002")
    assert set(load_file(str(root / "step-000002" / "trainable.safetensors")))  # readable tensors
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "step-000002"]  # no torn dir left
    assert list(Checkpoint.objects.filter(job=job).values_list("step", flat=True)) == [2]
    assert sweep().requeued == []  # failed for good: no retry loop


@pytest.mark.timeout(180)
def test_a_full_disk_while_writing_the_final_adapter_is_disk_full_and_leaves_no_adapter(
    make_config,  # noqa: F811 (fixture)
    tmp_path,
):
    cfg = make_config(output_dir=str(tmp_path / "run"), max_steps=2, checkpoint_every=100)
    code, lines, err = run_engine(cfg, tmp_path, "final", FAULT="disk_full_final", FAULT_FSIZE=str(8 * 1024))
    errors = [m for m in lines if m["type"] == "error"]
    assert code != 0 and len(errors) == 1, err[-2000:]
    assert errors[0]["code"] == DISK_FULL, errors[0]
    assert "disk space" in errors[0]["suggestion"]
    assert not (Path(cfg.output_dir) / "adapter").exists()  # nothing half-written published


def test_it_reports_a_full_disk_that_torch_or_safetensors_wrapped_as_disk_full():
    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    torn.__context__ = OSError(errno.ENOSPC, "No space left on device")
    wrapped = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    quota = OSError(errno.EFBIG, "File too large")
    for exc in (torn, wrapped, quota):
        converted = ckpt.disk_errors_as_engine_errors(exc, "checkpoint")
        assert isinstance(converted, EngineError) and converted.code == DISK_FULL
    other = RuntimeError("unexpected pos 1 vs 2")
    assert ckpt.disk_errors_as_engine_errors(other, "checkpoint") is other
    assert ckpt.disk_errors_as_engine_errors(OSError(errno.EACCES, "denied"), "x").errno == errno.EACCES
    assert os.strerror(errno.EFBIG) in str(ckpt.disk_errors_as_engine_errors(quota, "x"))
