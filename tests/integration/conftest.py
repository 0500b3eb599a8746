"""Real PostgreSQL + Redis + ``celery worker`` processes started (and always killed) by the test.

Each test gets its own workers, pointed at pytest-django's test database (hence
``transactional_db``: the worker must see committed rows) and at the test's DATA_DIR.
Timing knobs go through the worker's environment: a 5 s lease and a 1 s heartbeat so a
killed worker is noticed in seconds, not a minute.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import require_postgres, require_redis

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120


def _test_database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] or "postgres"
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class WorkerProcess:
    """One ``celery -A tuninglab worker`` in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as fh:
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.log()[-4000:]}")

    def kill9(self) -> None:
        """SIGKILL the worker's whole process group (main process and pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def _purge_broker(url: str) -> None:
    """Drop wake-ups other suites left on the queues (they dispatched with nobody consuming)."""
    import redis

    client = redis.Redis.from_url(url)
    client.delete("cpu", "gpu", "maintenance", "unacked", "unacked_index", "unacked_mutex")


@pytest.fixture
def live_stack(transactional_db, settings) -> dict[str, Any]:
    """Skip without PG/Redis (fail under CI=true); purge the queues; describe the stack."""
    require_postgres()
    redis_url = require_redis()
    _purge_broker(redis_url)
    assert settings.TUNINGLAB_INPROCESS_WORKER is False, "with REDIS_URL set, jobs must go through Celery"
    return {"redis_url": redis_url, "database_url": _test_database_url(), "data_dir": str(settings.DATA_DIR)}


@pytest.fixture
def start_worker(live_stack, tmp_path) -> Iterator[Any]:
    """``start_worker(name, env=..., pool=..., concurrency=..., beat=..., queues=...)`` → a ready WorkerProcess."""
    workers: list[WorkerProcess] = []

    def start(
        name: str,
        *,
        env: dict[str, str] | None = None,
        pool: str = "solo",
        concurrency: int = 1,
        beat: bool = False,
        wait: bool = True,
        queues: str | None = None,
    ) -> WorkerProcess:
        # Beat sends the sweep to `maintenance`: a worker that runs beat serves that queue too,
        # unless the test chooses its queues.
        queues = queues or ("cpu,maintenance" if beat else "cpu")
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tuninglab.settings",
            "DATABASE_URL": live_stack["database_url"],
            "REDIS_URL": live_stack["redis_url"],
            "TUNINGLAB_DATA_DIR": live_stack["data_dir"],
            "TUNINGLAB_INPROCESS_WORKER": "false",
            "TUNINGLAB_LEASE_SECONDS": "5",
            "TUNINGLAB_HEARTBEAT_SECONDS": "1",
            "TUNINGLAB_SWEEP_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tuninglab",
            "worker",
            "-Q",
            queues,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
        if beat:
            argv += ["-B", "-s", str(tmp_path / f"beat-{name}")]
        worker = WorkerProcess(name, argv, full_env, tmp_path / f"worker-{name}.log")
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start

    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=30)
    # Training children die with their worker (PR_SET_PDEATHSIG); make sure anyway.
    _kill_training_children()
    from django.db import connections

    connections.close_all()


def _kill_training_children() -> None:
    from tunings.models import JobEvent

    with contextlib.suppress(Exception):
        for data in JobEvent.objects.filter(data__has_key="pid").values_list("data", flat=True):
            pid = int(data["pid"])
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def live_database_url() -> str:
    """The URL of pytest-django's test database, for the processes a test starts (API servers, workers)."""
    return _test_database_url()
