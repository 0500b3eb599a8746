"""Fixtures for worker tests: job rows made directly, and a scripted fake training child."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from tuninglab import dispatch

REAL_DISPATCH = dispatch.dispatch_tuning_job
REAL_PENDING = dispatch.pending_wakeups
DATA = Path(__file__).resolve().parent / "data"
FAKE_ENGINE = DATA / "fake_engine.py"
ASSETS = Path(__file__).resolve().parents[2] / "lora_engine" / "assets"


def make_training_file(owner, settings, *, name: str = "identity.jsonl", content: bytes | None = None):
    """A processed TrainingFile row whose content sits under DATA_DIR (like an upload)."""
    from tunings.models import TrainingFile

    content = content if content is not None else (ASSETS / "identity.jsonl").read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    rel = Path("files") / f"{digest}.jsonl"
    path = Path(settings.DATA_DIR) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return TrainingFile.objects.create(
        owner=owner,
        filename=name,
        sha256=digest,
        bytes=len(content),
        storage_path=str(rel),
        format="openai_chat",
        example_count=content.count(b"\n"),
        status=TrainingFile.Status.PROCESSED,
    )


@pytest.fixture
def fake_base_model(db, tmp_path):
    """A registered base model whose dir exists (the fake engine never reads it)."""
    from registry.models import BaseModel

    model_dir = tmp_path / "fake-base"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    return BaseModel.objects.create(name="tiny-llama", path=str(model_dir), architecture="LlamaForCausalLM")


@pytest.fixture
def make_job(settings, fake_base_model):
    """Create a queued TuningJob row (bypassing the jobs API, which has its own tests)."""
    from tunings.models import TuningJob

    def make(owner, *, priority: int = 0, hyperparameters: dict | None = None, status=None, **extra):
        tf = extra.pop("training_file", None) or make_training_file(owner, settings)
        return TuningJob.objects.create(
            owner=owner,
            base_model=fake_base_model,
            training_file=tf,
            priority=priority,
            resolved_hyperparameters=hyperparameters or {"max_steps": 3, "batch_size": 2},
            status=status or TuningJob.Status.QUEUED,
            **extra,
        )

    return make


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    """Run ``tests/workers/data/fake_engine.py`` instead of the real engine.

    Call it with the list of actions; it returns the script path.
    """
    import workers.child

    monkeypatch.setattr(
        workers.child, "train_command", lambda cfg_path: [sys.executable, str(FAKE_ENGINE), str(cfg_path)]
    )

    def script(actions: list[dict]) -> Path:
        path = tmp_path / "fake-script.json"
        path.write_text(json.dumps(actions))
        monkeypatch.setenv("FAKE_ENGINE_SCRIPT", str(path))
        return path

    return script


@pytest.fixture
def fast_lease(settings):
    """Short heartbeat and lease so lease tests take a second, not a minute."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "HEARTBEAT_SECONDS": 0.2, "LEASE_SECONDS": 2}
    return settings.TUNINGLAB


@pytest.fixture(autouse=True)
def dispatched(monkeypatch):
    """Record wake-ups instead of sending them (no background worker thread, no broker).

    Tests that need the real dispatch restore ``REAL_DISPATCH`` / ``REAL_PENDING``.
    """
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(dispatch, "dispatch_tuning_job", lambda job_id, queue="cpu": calls.append((job_id, queue)))
    monkeypatch.setattr(dispatch, "pending_wakeups", lambda queue: sum(1 for _, q in calls if q == queue))
    return calls
