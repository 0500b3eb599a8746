"""A distributed job's launch: the argv and DeepSpeed config the worker records, and a lost rank's resume.

No real torchrun or DeepSpeed here (the engine's tests run them): ``subprocess.Popen`` is
recorded, or the "python" the launcher argv starts is a script that runs the fake engine on
the config (the argv's last element), as a launcher whose rank 0 prints the protocol lines.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from lora_engine.distributed import DistributedSpec
from lora_engine.launchers import deepspeed_config, launch_plan
from tests.helpers import wait_until
from tests.workers.conftest import FAKE_ENGINE
from tuninglab import dispatch
from tuninglab.task_names import FOLLOW_NODE
from tunings.models import JobEvent, TuningJob
from workers import child as child_mod
from workers.job_config import build_train_config, job_paths
from workers.runner import run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

HP = {"max_steps": 6, "batch_size": 4}


def distributed(**fields) -> dict:
    return DistributedSpec(**fields).to_dict()


@pytest.fixture
def recorded_popen(monkeypatch):
    """Record each spawn's argv and env instead of starting it (the attempt then fails to start)."""
    spawned: list[dict] = []

    def record(argv, *args, **kwargs):
        spawned.append({"argv": list(argv), "env": dict(kwargs.get("env") or {})})
        raise OSError("argv recorded; no process started")

    monkeypatch.setattr(subprocess, "Popen", record)
    return spawned


@pytest.fixture
def fake_python(settings, tmp_path):
    """A "python" that, started as any launcher, runs the fake engine on the config path (its last argument)."""
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\nfor last; do :; done\nexec "{sys.executable}" "{FAKE_ENGINE}" "$last"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    settings.TUNINGLAB = {**settings.TUNINGLAB, "PYTHON_EXECUTABLE": str(script)}
    return script


def test_it_records_and_spawns_torchrun_for_a_ddp_job(make_job, user, recorded_popen):
    job = make_job(user, hyperparameters=HP, distributed=distributed(strategy="ddp", nproc_per_node=2))
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()

    paths = job_paths(job.id)
    cfg = build_train_config(job, attempt=1).config
    python = child_mod.python_executable()
    expected = launch_plan(cfg, "attempt-1.json", python=python, cuda=False)
    assert job.launch_config == {
        "launcher": "torchrun",
        "world_size": 2,
        "argv": expected.argv,
        "env": {"DS_ACCELERATOR": "cpu"},
    }
    assert expected.argv[:4] == [python, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert "--standalone" in expected.argv and "--max-restarts=0" in expected.argv
    assert expected.argv[-3:] == ["-m", "lora_engine.train", "attempt-1.json"]
    # The process gets the absolute config path (the row shows it relative to the job dir) and the env.
    (spawn,) = recorded_popen
    assert spawn["argv"] == [*expected.argv[:-1], str(paths.config_file(1))]
    assert spawn["env"]["DS_ACCELERATOR"] == "cpu"
    assert json.loads(paths.config_file(1).read_text())["distributed"] == job.distributed
    assert not paths.deepspeed_config_file(1).exists()
    # The spawn failed, so the job failed, but the row says what was tried.
    assert (job.status, job.error["code"]) == (TuningJob.Status.FAILED, "internal_error")


def test_it_writes_and_records_the_deepspeed_config_of_a_zero3_job(make_job, user, recorded_popen):
    spec = distributed(strategy="deepspeed", zero_stage=3, offload_optimizer=True, nproc_per_node=2)
    job = make_job(user, hyperparameters={**HP, "grad_accum_steps": 2}, distributed=spec)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()

    paths = job_paths(job.id)
    launch = job.launch_config
    (spawn,) = recorded_popen
    port = next(a for a in launch["argv"] if a.startswith("--master_port="))
    assert 1 <= int(port.split("=")[1]) <= 65535
    cfg = build_train_config(job, attempt=1).config
    expected = launch_plan(
        cfg, "attempt-1.json", python=child_mod.python_executable(), cuda=False, master_port=int(port.split("=")[1])
    )
    assert launch["argv"] == expected.argv
    assert expected.argv[:5] == [child_mod.python_executable(), "-m", "deepspeed.launcher.runner", "--num_gpus=2", port]
    assert expected.argv[-3:] == ["--module", "lora_engine.train", "attempt-1.json"]
    assert spawn["argv"] == [*launch["argv"][:-1], str(paths.config_file(1))]
    assert (launch["launcher"], launch["world_size"], launch["env"]) == ("deepspeed", 2, {"DS_ACCELERATOR": "cpu"})

    saved = json.loads(paths.deepspeed_config_file(1).read_text())
    assert saved == launch["deepspeed_config"] == deepspeed_config(cfg, cuda=False)
    zero = saved["zero_optimization"]
    assert (zero["stage"], zero["offload_optimizer"]) == (3, {"device": "cpu", "pin_memory": False})
    # The global batch of 4 is 2 per rank; with 2 accumulation steps DeepSpeed's train batch is 8.
    assert (saved["train_micro_batch_size_per_gpu"], saved["gradient_accumulation_steps"]) == (2, 2)
    assert saved["train_batch_size"] == 8
    assert saved["bf16"] == {"enabled": False}


def test_a_multi_node_job_launches_node_zero_at_its_rendezvous(make_job, user, recorded_popen, monkeypatch):
    spec = distributed(strategy="fsdp", nproc_per_node=2, nnodes=2, rdzv_endpoint="node0.internal:29400")
    job = make_job(user, hyperparameters=HP, distributed=spec)
    sent: list[tuple[str, list, str]] = []  # node 1's start, recorded (tests/workers/test_multi_node.py runs it)
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: sent.append((name, list(args), queue)))
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert [(name, args[3], args[4:]) for name, args, _ in sent] == [(FOLLOW_NODE, 1, ["node0.internal", 29400])]

    launch = job.launch_config
    assert (launch["node_rank"], launch["master_addr"], launch["master_port"], launch["nnodes"]) == (
        0,
        "node0.internal",
        29400,
        2,
    )
    assert launch["world_size"] == 4
    cfg = build_train_config(job, attempt=1).config
    expected = launch_plan(
        cfg,
        "attempt-1.json",
        python=child_mod.python_executable(),
        cuda=False,
        node_rank=0,
        master_addr="node0.internal",
        master_port=29400,
    )
    assert launch["argv"] == expected.argv
    for flag in ("--nnodes=2", "--node-rank=0", "--master-addr=node0.internal", "--master-port=29400"):
        assert flag in launch["argv"]


def test_a_single_process_job_records_its_plain_command(fake_engine, make_job, user):
    fake_engine([{"adapter": True}, {"done": True}])
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED
    assert (job.launch_config["launcher"], job.launch_config["world_size"], job.launch_config["env"]) == (
        "single",
        1,
        {},
    )
    assert job.launch_config["argv"][-1] == "attempt-1.json"


def test_a_lost_rank_releases_the_job_and_the_next_attempt_resumes(
    fake_engine, fake_python, make_job, user, dispatched
):
    # Attempt 1: checkpoint at step 2, then the launcher ends with code 1 and no error line
    # (what torchrun does when one rank is killed).
    fake_engine(
        [
            {"train": {"steps": 3, "checkpoint_every": 2}},
            {"stderr": "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: rank 1 exited -9"},
            {"exit": 1},
        ]
    )
    job = make_job(user, hyperparameters=HP, distributed=distributed(strategy="ddp", nproc_per_node=2))
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id
    job.refresh_from_db()

    assert (job.status, job.attempt, job.error) == (TuningJob.Status.QUEUED, 1, None)
    assert dispatched == [(job.id, "cpu")]  # woken up to resume
    lost = JobEvent.objects.get(job=job, message__startswith="Attempt 1 lost")
    assert lost.level == JobEvent.Level.WARNING
    assert lost.message == (
        "Attempt 1 lost a training process (the torchrun launcher exited with code 1, no rank reported an error); "
        "the job resumes from its last checkpoint in a new attempt."
    )
    assert lost.data["returncode"] == 1
    assert any("ChildFailedError" in line for line in lost.data["log_tail"])

    # Attempt 2 starts from attempt 1's step-2 checkpoint and finishes.
    fake_engine([{"train": {"steps": 6, "checkpoint_every": 2}}, {"adapter": True}, {"done": True}])
    assert run_job(job.id, worker_id="w2", queue="cpu") == job.id
    job.refresh_from_db()
    assert (job.status, job.attempt) == (TuningJob.Status.SUCCEEDED, 2), job.error
    assert JobEvent.objects.filter(job=job, message="resumed from step-000002 at step 2").exists()
    config = json.loads((job_paths(job.id).job_dir / "fake.config.json").read_text())
    assert config["resume"] is True
    assert job.launch_config["argv"][-1] == "attempt-2.json"


def test_a_launcher_killed_by_a_signal_is_a_lost_rank_too(fake_engine, fake_python, make_job, user, dispatched):
    # One process killed by SIGKILL fails (out_of_memory, see test_runner); a distributed attempt resumes.
    fake_engine([{"train": {"steps": 1}}, {"kill_self": int(signal.SIGKILL)}])
    job = make_job(user, hyperparameters=HP, distributed=distributed(strategy="deepspeed", nproc_per_node=2))
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert (job.status, job.attempt) == (TuningJob.Status.QUEUED, 1)
    lost = JobEvent.objects.get(job=job, message__startswith="Attempt 1 lost")
    assert "(the deepspeed launcher was killed by SIGKILL, no rank reported an error)" in lost.message
    assert lost.data["returncode"] == -signal.SIGKILL


def test_a_lost_rank_on_the_last_attempt_fails_the_job(fake_engine, fake_python, make_job, user, dispatched):
    fake_engine([{"train": {"steps": 1}}, {"exit": 1}])
    job = make_job(user, hyperparameters=HP, distributed=distributed(strategy="fsdp", nproc_per_node=2), max_attempts=1)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "max_attempts_exceeded"
    assert job.error["message"].startswith("Attempt 1 of 1 lost a training process (the torchrun launcher exited")
    assert "OOM killer" in job.suggestion


def test_an_error_line_from_a_rank_still_fails_the_job_with_its_code(fake_engine, fake_python, make_job, user):
    fake_engine(
        [
            {"emit": {"type": "error", "code": "out_of_memory", "message": "Rank 1 ran out of memory.", "param": None}},
            {"exit": 1},
        ]
    )
    job = make_job(user, hyperparameters=HP, distributed=distributed(strategy="deepspeed", nproc_per_node=2))
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error == {"code": "out_of_memory", "message": "Rank 1 ran out of memory.", "param": None}
    assert not JobEvent.objects.filter(job=job, message__contains="lost a training process").exists()


def test_a_single_process_child_that_exits_non_zero_still_fails(fake_engine, make_job, user, dispatched):
    fake_engine([{"train": {"steps": 1}}, {"exit": 1}])
    job = make_job(user)
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "internal_error"
    assert "exited with code 1" in job.error["message"]
    assert dispatched == []


RANK_IN_ITS_OWN_SESSION = """
import subprocess, sys, time
# Like torchrun: the rank gets a session of its own, so a signal to our group misses it.
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(rank.pid, flush=True)
time.sleep(60)
"""


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead for our purpose
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descendants are found through /proc")
def test_killing_a_launcher_kills_ranks_in_their_own_sessions(tmp_path):
    child = child_mod.TrainingChild([sys.executable, "-c", RANK_IN_ITS_OWN_SESSION], log_path=tmp_path / "x.log")
    child.start()
    try:
        line = child.next_line(timeout=30)
        rank_pid = int(line.raw)
        assert os.getpgid(rank_pid) != os.getpgid(child.pid)  # out of reach of a group signal alone
        child.kill()
        assert child.wait(10) == -signal.SIGKILL
        assert wait_until(lambda: not pid_alive(rank_pid), timeout=10)
    finally:
        child.close()
