"""Helpers for the training-recipe tests: tiny configs, in-process and subprocess runs.

`tiny_model_dir` comes from the root conftest (built once per session, cached in .cache/).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_engine.config import TrainConfig
from lora_engine.progress import ProgressEmitter
from lora_engine.protocol import LINE_TYPES
from lora_engine.tiny_model import ASSETS_DIR
from lora_engine.train import run

REPO_ROOT = Path(__file__).resolve().parents[2]
IDENTITY_FILE = ASSETS_DIR / "identity.jsonl"


@pytest.fixture
def make_config(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., TrainConfig]:
    """Build a small, fast TrainConfig; keyword overrides win."""

    def make(**overrides: Any) -> TrainConfig:
        base: dict[str, Any] = {
            "base_model_dir": str(tiny_model_dir),
            "train_file": str(IDENTITY_FILE),
            "output_dir": str(tmp_path / "run"),
            "target_modules": ["q_proj", "v_proj"],
            "rank": 4,
            "alpha": 8.0,
            "dropout": 0.1,
            "learning_rate": 5e-3,
            "batch_size": 4,
            "max_steps": 6,
            "seed": 3,
        }
        base.update(overrides)
        if "num_epochs" in overrides and "max_steps" not in overrides:
            base["max_steps"] = None
        return TrainConfig(**base)

    return make


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every stdout line must be one JSON object with a known type (the protocol)."""
    lines = []
    for raw in text.splitlines():
        obj = json.loads(raw)  # raises on anything that is not JSON
        assert isinstance(obj, dict) and obj.get("type") in LINE_TYPES, raw
        lines.append(obj)
    return lines


def run_inprocess(cfg: TrainConfig) -> tuple[int, list[dict[str, Any]]]:
    """Run the recipe in this process; returns (exit code, parsed JSON lines)."""
    buf = io.StringIO()
    emitter = ProgressEmitter(buf, cfg.metrics_file)
    try:
        code = run(cfg, emitter)
    finally:
        emitter.close()
    return code, parse_lines(buf.getvalue())


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def start_subprocess(cfg: TrainConfig, tmp_path: Path, name: str = "cfg.json") -> subprocess.Popen:
    """`python -m lora_engine.train CONFIG.json` as the worker starts it."""
    path = tmp_path / name
    cfg.to_json(path)
    return subprocess.Popen(
        [sys.executable, "-m", "lora_engine.train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=engine_env(),
    )


def by_type(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["type"] == kind]


def build_tiny_llama(
    *,
    vocab_size: int,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    seed: int = 0,
    **config: Any,
) -> LlamaForCausalLM:
    """A randomly initialised, seeded Llama small enough for unit tests (GQA: 4 heads, 2 kv heads).

    Tests that need no trained weights build one of these in milliseconds instead of the
    session-wide `tiny_model_dir`. Returned in train mode, as `LlamaForCausalLM(...)` is.
    """
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=64,
            **config,
        )
    )
