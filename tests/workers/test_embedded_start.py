"""Embedded mode: the in-process worker (and its sweeper) starts with the serving process.

A job left ``running`` by a process that died must be re-queued and resumed when the server
comes back, without waiting for somebody to submit a new job; management commands
(``migrate``, tests) must not start a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tuninglab import dispatch

REPO_ROOT = Path(__file__).resolve().parents[2]
THREAD_NAME = "tuninglab-inprocess-worker"
STARTED = "in-process worker started in pid"

# Runs in a fresh process: migrate an empty SQLite database, then leave behind what a killed
# server leaves: a `running` job whose lease has expired.
SETUP = """
import json, threading
from datetime import timedelta
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from django.utils import timezone
from registry.models import BaseModel
from tunings.models import TrainingFile, TuningJob
owner = get_user_model().objects.create_user(username="alice", password="pw-alice-123")
base = BaseModel.objects.create(name="tiny-llama", path="/nonexistent", architecture="LlamaForCausalLM")
tf = TrainingFile.objects.create(
    owner=owner, filename="a.jsonl", sha256="0" * 64, bytes=1, storage_path="files/a.jsonl",
    format="openai_chat", example_count=1, status=TrainingFile.Status.PROCESSED,
)
job = TuningJob.objects.create(
    owner=owner, base_model=base, training_file=tf, resolved_hyperparameters={"max_steps": 3},
    status=TuningJob.Status.RUNNING, attempt=1, max_attempts=3, fencing_token=1, lease_owner="dead-host",
    lease_until=timezone.now() - timedelta(seconds=30),
)
print(json.dumps({"job": job.id, "threads": [t.name for t in threading.enumerate()]}))
"""


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "RUN_MAIN"}}
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "tuninglab.settings",
        "TUNINGLAB_DATA_DIR": str(data_dir),
        "TUNINGLAB_INPROCESS_WORKER": "true",
        # The claim after the re-queue spawns a "training child" that exits at once: the test
        # is about who sweeps and claims, not about training.
        "TUNINGLAB_PYTHON": "/bin/false",
        "PYTHONUNBUFFERED": "1",
    }


def _job_state(db: Path, job_id: str) -> tuple[str, int, int]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        status, attempt = conn.execute(
            "SELECT status, attempt FROM tunings_tuningjob WHERE id = ?", [job_id]
        ).fetchone()
        (requeues,) = conn.execute(
            "SELECT count(*) FROM tunings_jobevent WHERE job_id = ? AND message LIKE 'Lease of attempt 1 expired%'",
            [job_id],
        ).fetchone()
    return status, attempt, requeues


def test_it_starts_the_registered_worker_only_in_embedded_mode(settings, monkeypatch):
    started: list[bool] = []
    transport = dispatch.LocalTransport(submit=lambda *a: None, pending=lambda q: 0, start=lambda: started.append(True))
    monkeypatch.setattr(dispatch, "_local", transport)
    settings.TUNINGLAB_INPROCESS_WORKER = False
    dispatch.start_local_worker()
    assert started == []
    settings.TUNINGLAB_INPROCESS_WORKER = True
    dispatch.start_local_worker()
    assert started == [True]


def test_it_registers_the_in_process_worker_as_the_startable_transport():
    from workers import inprocess

    assert dispatch._local is not None
    assert dispatch._local.start == inprocess.ensure_started


@pytest.mark.timeout(90)
def test_it_sweeps_a_job_left_running_as_soon_as_the_server_starts(tmp_path):
    env = _env(tmp_path)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert setup.returncode == 0, setup.stderr[-4000:]
    made = json.loads(setup.stdout.strip().splitlines()[-1])
    assert THREAD_NAME not in made["threads"], "a management command must not start the worker"
    job_id, db = made["job"], tmp_path / "db.sqlite3"

    # runserver *with* its autoreloader: the watching parent must not start a worker, the
    # serving child (RUN_MAIN) must, once. No request and no submit reach the server.
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{free_port()}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        state = _job_state(db, job_id)
        while time.monotonic() - started < 45:
            state = _job_state(db, job_id)
            if state[2] == 1 and state[1] >= 2:
                break
            assert server.poll() is None, log_path.read_text()[-4000:]
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        output = log_path.read_text()
        # Re-queued by the sweep, then claimed again (attempt 2) by the in-process worker.
        assert state[2] == 1 and state[1] >= 2, (state, output[-4000:])
        # One worker per serving process (a file another edit touches restarts the child: a new
        # pid is fine), none in the watching parent.
        pids = [int(line.rsplit("pid ", 1)[1].split()[0]) for line in output.splitlines() if STARTED in line]
        assert pids and len(pids) == len(set(pids)) and server.pid not in pids, output[-4000:]
        print(f"re-queued and claimed {elapsed:.1f}s after the server was started")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
