"""The models the benchmarks run on: built here (no downloads) and cached under ``.cache/``.

* ``tiny_model()``: the tests' tiny Llama (``lora_engine.tiny_model``, pre-trained on the
  bundled corpus), same cache key as the test fixture.
* ``bench_model(shape)``: a randomly initialised Llama of ``SHAPES[shape]`` with the tiny
  model's tokenizer and chat template, cached by shape. Random weights are enough: the cost of
  a training step or of generating a token does not depend on what the weights are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_engine.fsio import atomic_dir
from lora_engine.tiny_model import TINY_MODEL_VERSION, build_tiny_model

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")

# Model shapes; the vocabulary is the tiny tokenizer's (1024).
SHAPES: dict[str, dict[str, int]] = {
    # The training-step benchmark's model: 28.0 M parameters.
    "default": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "max_position_embeddings": 1024,
    },
    "quick": {
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
    },
    # The serving benchmark's larger model: 50.9 M parameters (hidden 640, 10 layers).
    "serving-50m": {
        "hidden_size": 640,
        "intermediate_size": 1728,
        "num_hidden_layers": 10,
        "num_attention_heads": 10,
        "num_key_value_heads": 10,
        "max_position_embeddings": 1024,
    },
}


def tiny_model() -> Path:
    """The tests' tiny Llama, built once and cached under ``.cache/`` (same key as the fixture)."""
    target = REPO / ".cache" / f"tiny-model-v{TINY_MODEL_VERSION}"
    if not (target / "config.json").exists():
        with atomic_dir(target) as staging:
            build_tiny_model(staging)
    return target


def bench_model(shape_name: str) -> Path:
    """A randomly initialised Llama of ``SHAPES[shape_name]`` with the tiny tokenizer, cached by shape."""
    tok_dir = tiny_model()
    tok_cfg = json.loads((tok_dir / "config.json").read_text())
    shape = {**SHAPES[shape_name], "vocab_size": tok_cfg["vocab_size"]}
    key = hashlib.sha256(json.dumps({"shape": shape, "tiny": TINY_MODEL_VERSION}, sort_keys=True).encode()).hexdigest()
    target = REPO / ".cache" / f"train-step-model-{key[:12]}"
    if (target / "config.json").exists():
        return target
    torch.manual_seed(0)
    config = LlamaConfig(
        **shape,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok_cfg.get("bos_token_id"),
        eos_token_id=tok_cfg.get("eos_token_id"),
        pad_token_id=tok_cfg.get("pad_token_id"),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = LlamaForCausalLM(config)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (tok_dir / name).exists():
                shutil.copy2(tok_dir / name, tmp / name)
    return target
