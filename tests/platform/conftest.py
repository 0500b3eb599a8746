"""Platform fixtures: a hand-made HF model dir, jobs in given states, an admin client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.fixture
def hf_model_dir(tmp_path: Path) -> Path:
    return write_fake_model(tmp_path / "fake-llama")


@pytest.fixture
def fake_base_model(db, hf_model_dir):
    from registry.services import base_model_register

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
