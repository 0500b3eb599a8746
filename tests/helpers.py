"""Small helpers shared by test suites."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import psutil
import pytest
from django.db import connection

from tuninglab import dispatch


def skip_or_fail_in_ci(message: str) -> None:
    """Skip the test for a missing prerequisite — but *fail* in CI (``CI=true``), where every
    prerequisite is installed: a green CI must not come from tests it skipped."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true forbids skipping it")
    pytest.skip(message)


# Debian's Chromium, driven by Playwright in the browser tests (tests/browser, the Swagger UI test).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


# Where the browser tests save their screenshots (README, "Quickstart"; the folder for CI to keep).
SCREENSHOTS = Path(
    os.environ.get("TUNINGLAB_SCREENSHOT_DIR", Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots")
)


def require_chromium() -> None:
    """Skip without Debian's Chromium locally; fail under ``CI=true`` (scripts/run_tests.sh installs it)."""
    if not CHROMIUM.exists():
        skip_or_fail_in_ci(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_postgres() -> None:
    """Skip unless the test database is PostgreSQL — but *fail* in CI (``CI=true``).

    Some guarantees (row locks, concurrent unique inserts) only mean something on PostgreSQL;
    a CI run that silently skipped them would report a green it did not earn.
    """
    if connection.vendor == "postgresql":
        return
    message = f"needs PostgreSQL (DATABASE_URL); the test database is {connection.vendor}"
    skip_or_fail_in_ci(message)


def require_redis() -> str:
    """Return ``REDIS_URL`` when a Redis answers there; skip otherwise — but *fail* in CI (``CI=true``).

    Added by the workers suite (real Celery workers need a real broker).
    """
    url = os.environ.get("REDIS_URL", "")
    problem = "" if url else "REDIS_URL is not set"
    if url:
        try:
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except Exception as exc:  # any connection problem means: no usable broker
            problem = f"Redis at {url} does not answer ({exc})"
    if not problem:
        return url
    message = f"needs Redis: {problem}"
    skip_or_fail_in_ci(message)
    return ""


def record_dispatches(monkeypatch: pytest.MonkeyPatch, settings) -> list[tuple[str, str]]:
    """Replace the wake-up sender (``tuninglab.dispatch.dispatch_tuning_job``) with a recorder
    of ``(job_id, queue)`` calls for one test.

    Jobs then stay ``queued``: API tests run fast and leave no training processes behind.
    Shared by the api, platform and sdk suites (their ``dispatched`` / ``no_worker`` fixtures).
    """
    settings.TUNINGLAB_INPROCESS_WORKER = False
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(dispatch, "dispatch_tuning_job", lambda job_id, queue="cpu": calls.append((job_id, queue)))
    monkeypatch.setattr(dispatch, "pending_wakeups", lambda queue: sum(1 for _, q in calls if q == queue))
    return calls


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# Shapes of the fabricated model; the expected parameter count is their sum of products.
FAKE_TENSORS = {
    "model.embed_tokens.weight": (32, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (16, 8),
    "model.norm.weight": (8,),
}
FAKE_PARAMETER_COUNT = 32 * 8 + 8 * 8 + 16 * 8 + 8


def write_fake_model(root: Path, *, tensors: dict[str, tuple[int, ...]] | None = None) -> Path:
    """A minimal Hugging Face model dir: config.json, tokenizer.json, model.safetensors."""
    # Late: torch is needed only by the suites that fabricate model files.
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8})
    )
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    (root / "tokenizer_config.json").write_text("{}")
    shapes = tensors or FAKE_TENSORS
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, str(root / "model.safetensors"))
    return root


def training_rank_pid(launcher_pid: int, rank: int, timeout: float = 60) -> int:
    """The pid of the training process of ``rank`` under a torchrun/DeepSpeed launcher (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if "lora_engine.train" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} under launcher {launcher_pid}")
