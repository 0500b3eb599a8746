"""Adapter files in PEFT's format: ours load in PEFT, PEFT's load in ours, pickles are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import LlamaForCausalLM

from lora_engine.adapter_io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFormatError,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from lora_engine.lora import LoRALinear, inject_lora, lora_parameters
from tests.lora_engine.conftest import build_tiny_llama

VOCAB = 96


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return build_tiny_llama(vocab_size=VOCAB, seed=seed).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))


def _randomise(params) -> None:
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _our_adapter(tmp_path: Path, targets=("q_proj", "v_proj"), rank: int = 4, alpha: float = 8) -> tuple[Path, Tensor]:
    model = _tiny_llama()
    inject_lora(model, targets=list(targets), rank=rank, alpha=alpha)
    _randomise(p for _, p in lora_parameters(model))
    out = save_adapter(
        model,
        tmp_path / "adapter",
        base_model_name_or_path="tiny-llama",
        rank=rank,
        alpha=alpha,
        dropout=0.05,
        target_modules=list(targets),
    )
    with torch.no_grad():
        logits = model(input_ids=_ids()).logits
    return out, logits


def test_it_writes_peft_key_names_and_config_fields(tmp_path: Path) -> None:
    adapter_dir, _ = _our_adapter(tmp_path)

    assert sorted(p.name for p in adapter_dir.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    with safe_open(adapter_dir / WEIGHTS_NAME, "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 2 * 2
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.05)
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["bias"] == "none" and config["fan_in_fan_out"] is False and config["use_rslora"] is False
    assert config["base_model_name_or_path"] == "tiny-llama"
    assert not list(tmp_path.glob(".adapter.*"))  # no temp dir left behind


def test_it_saves_an_adapter_that_peft_loads_with_identical_logits(tmp_path: Path) -> None:
    adapter_dir, expected = _our_adapter(tmp_path, targets=("q_proj", "v_proj", "gate_proj"))

    peft_model = PeftModel.from_pretrained(_tiny_llama(), str(adapter_dir)).eval()
    with torch.no_grad():
        logits = peft_model(input_ids=_ids()).logits

    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(logits, _tiny_llama()(input_ids=_ids()).logits, atol=1e-3)  # the adapter matters


def test_it_loads_a_peft_saved_adapter_with_identical_logits(tmp_path: Path) -> None:
    peft_model = get_peft_model(
        _tiny_llama(), LoraConfig(r=8, lora_alpha=16, target_modules=["k_proj", "o_proj", "up_proj"], use_rslora=True)
    )
    _randomise(p for n, p in peft_model.named_parameters() if "lora_" in n)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=_ids()).logits
    peft_model.save_pretrained(str(tmp_path / "peft_adapter"))

    model = _tiny_llama()
    injected = load_adapter(model, tmp_path / "peft_adapter")
    with torch.no_grad():
        logits = model(input_ids=_ids()).logits

    assert len(injected) == 3 * 2
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in injected)
    assert model.get_submodule(injected[0]).scaling == pytest.approx(16 / 8**0.5)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_it_round_trips_its_own_adapter(tmp_path: Path) -> None:
    adapter_dir, expected = _our_adapter(tmp_path)
    model = _tiny_llama()

    load_adapter(model, adapter_dir)

    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_ids()).logits, expected, atol=1e-6, rtol=0)


def test_it_refuses_a_pickle_only_adapter(tmp_path: Path) -> None:
    adapter_dir, _ = _our_adapter(tmp_path)
    (adapter_dir / WEIGHTS_NAME).unlink()
    torch.save({"x": torch.zeros(1)}, adapter_dir / "adapter_model.bin")
    model = _tiny_llama()

    with pytest.raises(AdapterFormatError, match="pickle") as exc_info:
        load_adapter(model, adapter_dir)

    assert exc_info.value.code == "invalid_config"
    assert exc_info.value.param == WEIGHTS_NAME
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_it_rejects_weights_that_do_not_fit_and_leaves_the_model_untouched(tmp_path: Path) -> None:
    adapter_dir, _ = _our_adapter(tmp_path)
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    config["r"] = 2  # the file holds rank-4 tensors
    (adapter_dir / CONFIG_NAME).write_text(json.dumps(config))
    model = _tiny_llama()

    with pytest.raises(AdapterFormatError, match="shape"):
        load_adapter(model, adapter_dir)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_it_rejects_unknown_tensors(tmp_path: Path) -> None:
    adapter_dir, _ = _our_adapter(tmp_path)
    save_file({"base_model.model.lm_head.weight": torch.zeros(2, 2)}, adapter_dir / WEIGHTS_NAME)

    with pytest.raises(AdapterFormatError):
        load_adapter(_tiny_llama(), adapter_dir)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("peft_type", "IA3"),
        ("use_dora", True),
        ("bias", "all"),
        ("r", 0),
        ("lora_dropout", 1.5),
        ("modules_to_save", ["lm_head"]),
        ("exclude_modules", ["model.layers.0.self_attn.q_proj"]),
    ],
)
def test_it_rejects_configs_it_cannot_honour(tmp_path: Path, field: str, value) -> None:
    adapter_dir, _ = _our_adapter(tmp_path)
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    config[field] = value
    (adapter_dir / CONFIG_NAME).write_text(json.dumps(config))

    with pytest.raises(AdapterFormatError) as exc_info:
        read_adapter_config(adapter_dir)
    assert exc_info.value.param == field


def test_it_replaces_an_existing_adapter_dir_atomically(tmp_path: Path) -> None:
    first, _ = _our_adapter(tmp_path, rank=4)
    (first / "stale.txt").write_text("old")

    second, _ = _our_adapter(tmp_path, rank=2, alpha=4)

    assert second == first
    assert not (second / "stale.txt").exists()
    assert read_adapter_config(second)["r"] == 2
    assert [p.name for p in tmp_path.iterdir() if "adapter" in p.name] == ["adapter"]  # no temp/old dirs left


def test_it_writes_concrete_module_names_for_all_linear(tmp_path: Path) -> None:
    model = _tiny_llama()
    inject_lora(model, targets="all-linear", rank=2, alpha=4)

    out = save_adapter(
        model, tmp_path / "a", base_model_name_or_path="x", rank=2, alpha=4, dropout=0.0, target_modules=["all-linear"]
    )

    assert read_adapter_config(out)["target_modules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]


def test_it_refuses_to_save_a_model_without_lora(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no LoRA"):
        save_adapter(
            nn.Linear(2, 2), tmp_path / "a", base_model_name_or_path="x", rank=2, alpha=2, dropout=0, target_modules=[]
        )
    assert not (tmp_path / "a").exists()


def test_it_loads_into_a_copy_without_sharing_weights(tmp_path: Path) -> None:
    adapter_dir, _ = _our_adapter(tmp_path)
    model = _tiny_llama()
    twin = copy.deepcopy(model)
    load_adapter(model, adapter_dir)
    assert not any(isinstance(m, LoRALinear) for m in twin.modules())


def test_it_writes_full_module_names_when_only_some_layers_carry_lora(tmp_path: Path) -> None:
    model = _tiny_llama()
    inject_lora(model, targets=r"model\.layers\.0\.self_attn\.q_proj", rank=2, alpha=4)
    _randomise(p for _, p in lora_parameters(model))
    with torch.no_grad():
        expected = model(input_ids=_ids()).logits

    out = save_adapter(
        model, tmp_path / "a", base_model_name_or_path="x", rank=2, alpha=4, dropout=0.0, target_modules=["q_proj"]
    )

    assert read_adapter_config(out)["target_modules"] == ["model.layers.0.self_attn.q_proj"]
    peft_model = PeftModel.from_pretrained(_tiny_llama(), str(out)).eval()
    ours = _tiny_llama()
    assert load_adapter(ours, out) == ["model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=_ids()).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(input_ids=_ids()).logits, expected, atol=1e-6, rtol=0)
