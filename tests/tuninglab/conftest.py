"""Fixtures for the platform suites (admin, auth, operations): a hand-made HF model dir, jobs in given states."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_fake_model


@pytest.fixture
def hf_model_dir(tmp_path: Path) -> Path:
    return write_fake_model(tmp_path / "fake-llama")


@pytest.fixture
def fake_base_model(db, hf_model_dir):
    from registry.services.base_models import base_model_register

    return base_model_register(name="fake-llama", path=hf_model_dir)


@pytest.fixture
def training_file(db, user):
    from tunings.models import TrainingFile

    return TrainingFile.objects.create(
        owner=user,
        filename="train.jsonl",
        sha256="0" * 64,
        bytes=100,
        storage_path="files/x.jsonl",
        format="openai_chat",
        example_count=10,
        status=TrainingFile.Status.PROCESSED,
    )


@pytest.fixture
def make_job(db, user, fake_base_model, training_file):
    """Create a job row directly in ``status`` (the state services are tested elsewhere)."""
    from tunings.models import TuningJob

    def make(status: str = TuningJob.Status.QUEUED, **fields):
        defaults = {
            "owner": user,
            "base_model": fake_base_model,
            "training_file": training_file,
            "status": status,
            "hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": "auto"},
            "resolved_hyperparameters": {"n_epochs": 2, "learning_rate": 2e-4},
            "lora_rank": 4,
            "lora_alpha": 8.0,
            "target_modules": ["q_proj", "v_proj"],
            "seed": 7,
            "suffix": "demo",
            "metadata": {"team": "nlp"},
            "priority": 3,
            "resources": {"gpus": 0},
            "queue": "cpu",
            "max_attempts": 2,
        }
        defaults.update(fields)
        return TuningJob.objects.create(**defaults)

    return make
