"""merge_and_export: base + adapter baked into a plain HF model dir with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lora_engine.adapter_io import AdapterFormatError, load_adapter, save_adapter
from lora_engine.lora import inject_lora, lora_parameters
from lora_engine.merge import merge_and_export
from tests.lora_engine.conftest import build_tiny_llama

VOCAB = 96


def _base_model_dir(tmp_path: Path) -> Path:
    out = tmp_path / "base"
    build_tiny_llama(vocab_size=VOCAB, seed=0).save_pretrained(out)
    # stand-ins for the tokenizer files a real model dir carries
    (out / "tokenizer.json").write_text('{"version": "1.0"}')
    (out / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (out / "chat_template.jinja").write_text("{{ messages }}")
    return out


def _adapter_dir(tmp_path: Path, base_dir: Path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    inject_lora(model, targets="all-linear", rank=4, alpha=8)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return save_adapter(
        model,
        tmp_path / "adapter",
        base_model_name_or_path=str(base_dir),
        rank=4,
        alpha=8,
        dropout=0.0,
        target_modules=modules,
    )


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_it_exports_a_merged_model_with_the_logits_of_base_plus_adapter(tmp_path: Path) -> None:
    base_dir = _base_model_dir(tmp_path)
    adapter_dir = _adapter_dir(tmp_path, base_dir)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(9))
    with_adapter = AutoModelForCausalLM.from_pretrained(base_dir)
    load_adapter(with_adapter, adapter_dir)
    expected = _logits(with_adapter, ids)

    out = merge_and_export(base_dir, adapter_dir, tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, _logits(AutoModelForCausalLM.from_pretrained(base_dir), ids), atol=1e-3)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    assert not any("lora" in k for k in merged.state_dict())
    assert json.loads((out / "merge_info.json").read_text())["adapter_dir"] == str(adapter_dir)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".merged")] == []  # no temp dir left


def test_it_leaves_no_output_when_the_adapter_does_not_fit(tmp_path: Path) -> None:
    base_dir = _base_model_dir(tmp_path)
    adapter_dir = _adapter_dir(tmp_path, base_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))

    with pytest.raises(AdapterFormatError):
        merge_and_export(base_dir, adapter_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
