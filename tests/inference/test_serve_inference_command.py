"""``manage.py serve_inference`` as a process, against the stand-in vLLM (``fake_vllm_server.py``).

One supervisor per base model across processes (the database decides), SIGTERM ends vLLM's
whole process group before the command exits, and the command's argument checks.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from inference.models import ServingProcess
from inference.supervisor import Supervisor, SupervisorConflict
from tests.conftest import REPO_ROOT
from tests.inference.test_supervisor import (  # noqa: F401 - fixtures
    BASE,
    HOST,
    Status,
    alive,
    fake_vllm,
    group_members,
    ready,
    serving_row,
    spawn,
    start_supervisor,
    wait_row,
)
from tests.integration.conftest import _test_database_url
from tests.registry.conftest import tiny_base  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)  # the command is another process: committed rows only


@dataclass
class CommandProcess:
    proc: subprocess.Popen
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a service manager sends it; the exit code."""
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serve_inference(fake_vllm, spawn, settings, tmp_path) -> Callable[..., CommandProcess]:  # noqa: F811
    """``serve_inference(*args)``: the command in its own process, on the test database and DATA_DIR."""
    if connection.vendor == "postgresql":
        database_url = _test_database_url()
    else:  # the test database is a file (tests/conftest.py): the command opens it as the embedded setup would
        database_url = f"sqlite:///{connection.settings_dict['NAME']}?timeout=30&transaction_mode=IMMEDIATE"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tuninglab.settings",
        "DATABASE_URL": database_url,
        "TUNINGLAB_DATA_DIR": str(settings.DATA_DIR),
        "TUNINGLAB_INFERENCE_BASE_MODELS": f"{BASE}:{fake_vllm.port}",
        "TUNINGLAB_INFERENCE_HOST": HOST,
        "TUNINGLAB_VLLM_PYTHON": str(fake_vllm.wrapper),
        "TUNINGLAB_VLLM_HEALTH_SECONDS": "0.2",
        "TUNINGLAB_VLLM_HEALTH_FAILURES": "2",
        "TUNINGLAB_INFERENCE_RECONCILE_SECONDS": "0.2",
        "TUNINGLAB_VLLM_MAX_BACKOFF_SECONDS": "1",
        "TUNINGLAB_VLLM_STARTUP_TIMEOUT_SECONDS": "20",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    counter = itertools.count()

    def start(*args: str) -> CommandProcess:
        output_path = tmp_path / f"serve-inference-{next(counter)}.log"
        with open(output_path, "wb") as fh:
            proc = spawn(
                [sys.executable, "manage.py", "serve_inference", *args],
                cwd=REPO_ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        return CommandProcess(proc=proc, output_path=output_path)

    return start


def _serving_in(command: CommandProcess) -> ServingProcess:
    return wait_row(lambda r: ready()(r) and r.supervisor_pid == command.proc.pid, 30)


@pytest.mark.usefixtures("tiny_base")
def test_it_refuses_to_start_while_another_supervisor_serves_the_base(
    start_supervisor,  # noqa: F811
    serve_inference,
    fake_vllm,  # noqa: F811
):
    start_supervisor()
    first = wait_row(ready(), 15)

    second = serve_inference()

    assert second.proc.wait(timeout=30) == 1
    assert f"another supervisor (pid {os.getpid()} on {socket.gethostname()}) serves {BASE}" in second.output()
    row = serving_row()
    assert (row.status, row.pid, row.supervisor_pid) == (Status.READY, first.pid, os.getpid())
    assert fake_vllm.processes() == group_members(first.pid)  # no second vLLM was started


@pytest.mark.usefixtures("tiny_base")
def test_it_serves_until_sigterm_and_ends_the_vllm_process_group_on_the_way_out(
    serve_inference,
    fake_vllm,  # noqa: F811
):
    command = serve_inference()
    row = _serving_in(command)
    members = group_members(row.pid)
    assert len(members) == 2
    # While it runs, no other process may claim the base.
    with pytest.raises(SupervisorConflict):
        Supervisor(fake_vllm.base).claim()

    assert command.stop() == 0

    output = command.output()
    assert f"supervising vLLM for {BASE} at http://{HOST}:{fake_vllm.port}" in output
    assert "signal 15: stopping vLLM" in output and output.rstrip().endswith("stopped")
    assert not [pid for pid in members if alive(pid)]
    row = serving_row()
    assert (row.status, row.pid, row.loaded_adapters) == (Status.STOPPED, None, [])

    # Once its heartbeat is stale, the base is free for the next supervisor.
    ServingProcess.objects.filter(base_name=BASE).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    Supervisor(fake_vllm.base).claim()
    assert serving_row().supervisor_pid == os.getpid()


@pytest.mark.usefixtures("tiny_base")
def test_a_cleanly_stopped_supervisor_frees_the_base_at_once(
    serve_inference,
    fake_vllm,  # noqa: F811
):
    command = serve_inference()
    _serving_in(command)
    assert command.stop() == 0

    Supervisor(fake_vllm.base).claim()  # what the next `manage.py serve_inference` does first
    assert serving_row().supervisor_pid == os.getpid()


def test_it_refuses_a_base_model_it_does_not_serve_or_none_at_all(settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": (f"{BASE}:18555",)}
    with pytest.raises(CommandError, match=rf"not served by this deployment: other \(.*\['{BASE}'\]\)"):
        call_command("serve_inference", "--base-model", "other")

    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ()}
    with pytest.raises(CommandError, match="no base model to serve"):
        call_command("serve_inference")

    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": ("Not A Name",)}
    with pytest.raises(CommandError, match="is not 'name' or 'name:port'"):
        call_command("serve_inference")
    assert not ServingProcess.objects.exists()
