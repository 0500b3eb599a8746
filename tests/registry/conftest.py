"""Registry fixtures: the platform suite's hand-made model dir (registered as "fake-llama") and job rows on it."""

from __future__ import annotations

import json

import pytest

from tests.tuninglab.conftest import fake_base_model, hf_model_dir, training_file  # noqa: F401
from tests.workers.conftest import make_training_file
from tunings.models import TuningJob


@pytest.fixture
def make_job(db, user, fake_base_model, training_file):  # noqa: F811 - the imported fixtures
    """A job row on "fake-llama", queued unless told otherwise; ``owner`` defaults to ``user``."""

    def make(owner=None, *, status: str = TuningJob.Status.QUEUED, **fields):
        return TuningJob.objects.create(
            owner=owner or user,
            base_model=fake_base_model,
            training_file=training_file,
            status=status,
            resolved_hyperparameters={"max_steps": 3, "batch_size": 2},
            **fields,
        )

    return make


# ---------------------------------------------------------------------------------------------
# Versions on the real tiny Llama (aliases, pre-promotion check): realistic PEFT adapters built
# from the base's own layer shapes, registered through model_version_create_from_job.

LORA_MODULE_PATHS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


def _base_shapes(base_dir) -> dict[str, tuple[int, ...]]:
    from registry.services.base_models import base_model_inspect

    return base_model_inspect(path=base_dir).tensor_shapes


def write_peft_adapter(out_dir, base_dir, *, rank: int = 8, modules=("q_proj", "v_proj"), config_rank=None):
    """A PEFT-format LoRA adapter dir for the model in ``base_dir``: lora_A (r, in), lora_B (out, r)
    per targeted layer, shapes read from the base's safetensors header. ``config_rank`` lets the
    config claim another r than the tensors hold; a module not in LORA_MODULE_PATHS (e.g.
    ``lm_head``) is a top-level layer."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from lora_engine.adapter_io import PEFT_PREFIX, peft_adapter_config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    shapes = _base_shapes(base_dir)
    generator = torch.Generator().manual_seed(rank)
    tensors = {}
    for short in modules:
        if short in LORA_MODULE_PATHS:
            layers = sorted({k.rsplit(".", 3)[0] for k in shapes if k.endswith(f".{LORA_MODULE_PATHS[short]}.weight")})
            paths = [f"{layer}.{LORA_MODULE_PATHS[short]}" for layer in layers]
        else:
            paths = [short]
        for path in paths:
            out_features, in_features = shapes[f"{path}.weight"]
            tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator)
            tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = peft_adapter_config(
        base_model_name_or_path=str(base_dir),
        rank=config_rank or rank,
        alpha=2 * rank,
        dropout=0.0,
        target_modules=list(modules),
    )
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


@pytest.fixture
def tiny_base(db, tiny_model_dir):
    """The tiny Llama registered through the service as "tiny-llama", so it has its content hash."""
    from registry.services.base_models import base_model_register

    return base_model_register(name="tiny-llama", path=tiny_model_dir)


@pytest.fixture
def peft_adapter(tmp_path):
    """``peft_adapter(base_dir, rank=8, modules=("q_proj", "v_proj"), config_rank=None) -> Path``."""
    counter = iter(range(10**6))

    def make(base_dir, **options):
        return write_peft_adapter(tmp_path / f"adapter-{next(counter)}", base_dir, **options)

    return make


@pytest.fixture
def make_version(db, user, training_file):  # noqa: F811 - the imported fixture
    """``make_version(base=..., adapter_dir=..., owner=None, model_name="bot", **job_fields)``: a
    succeeded job on ``base`` and its registered version (v1, v2, ... per owner and name)."""
    from registry.services.versions import model_version_create_from_job

    def make(*, base, adapter_dir, owner=None, model_name: str = "bot", **fields):
        fields.setdefault("lora_rank", 8)
        fields.setdefault("target_modules", ["q_proj", "v_proj"])
        job = TuningJob.objects.create(
            owner=owner or user,
            base_model=base,
            training_file=training_file,
            status=TuningJob.Status.SUCCEEDED,
            model_name=model_name,
            resolved_hyperparameters={"max_steps": 3, "batch_size": 2},
            **fields,
        )
        return model_version_create_from_job(job=job, adapter_dir=adapter_dir, metrics={"final_loss": 1.25})

    return make


@pytest.fixture
def tiny_adapter_version(tiny_base, peft_adapter, make_version):
    """``tiny_adapter_version(rank=8, modules=..., **job_fields)``: a servable adapter version on tiny-llama."""

    def make(*, rank: int = 8, modules=("q_proj", "v_proj"), **fields):
        adapter = peft_adapter(tiny_base.path, rank=rank, modules=modules)
        return make_version(base=tiny_base, adapter_dir=adapter, lora_rank=rank, target_modules=list(modules), **fields)

    return make


# ---------------------------------------------------------------------------------------------
# Evaluation datasets: processed TrainingFile rows whose bytes sit under DATA_DIR like uploads.


@pytest.fixture
def make_dataset(db, user, settings):
    """``make_dataset(records=None, *, content=None, owner=None, name="eval.jsonl")``: a processed
    file row; ``records`` (dicts) are written as JSONL, or ``content`` bytes as they are."""

    def make(records=None, *, content: bytes | None = None, owner=None, name: str = "eval.jsonl"):
        if content is None:
            content = "".join(json.dumps(r) + "\n" for r in records).encode()
        return make_training_file(owner or user, settings, name=name, content=content)

    return make
