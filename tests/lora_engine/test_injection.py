"""inject_lora on a tiny Llama: PEFT parity, freezing, target selection, reports."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaForCausalLM

from lora_engine.lora import (
    LoRALinear,
    inject_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)
from lora_engine.report import format_report, memory_report, parameter_report
from tests.lora_engine.conftest import build_tiny_llama

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 32, 64, 2, 4, 2, 96
KV_DIM = HIDDEN // HEADS * KV_HEADS  # k/v projections are GQA-narrow: 16


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return build_tiny_llama(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
        seed=seed,
    ).eval()


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def _randomise_lora(model: nn.Module) -> None:
    """Non-zero B everywhere, so parity checks exercise the update (B is zero at init)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_it_matches_peft_get_peft_model_logits_and_grads(use_rslora: bool) -> None:
    ours = _tiny_llama()
    theirs = get_peft_model(
        copy.deepcopy(ours),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=use_rslora),
    )
    inject_lora(ours, targets=["q_proj", "v_proj", "down_proj"], rank=4, alpha=8, use_rslora=use_rslora)
    _randomise_lora(ours)
    peft_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, p in lora_parameters(ours):
            peft_name = "base_model.model." + name.replace(".weight", ".default.weight")
            peft_params[peft_name].copy_(p)
    ids = _ids()

    out_ours = ours(input_ids=ids, labels=ids)
    out_theirs = theirs(input_ids=ids, labels=ids)
    out_ours.loss.backward()
    out_theirs.loss.backward()

    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-5, rtol=0)
    n_checked = 0
    for name, p in lora_parameters(ours):
        peft_grad = peft_params["base_model.model." + name.replace(".weight", ".default.weight")].grad
        torch.testing.assert_close(p.grad, peft_grad, atol=1e-5, rtol=0)
        assert p.grad.abs().sum() > 0
        n_checked += 1
    assert n_checked == 2 * 3 * LAYERS


def test_it_freezes_everything_but_the_adapters() -> None:
    model = _tiny_llama()
    names = inject_lora(model, targets=["q_proj", "v_proj"], rank=2, alpha=4)

    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(LAYERS) for p in ("q_proj", "v_proj")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)


def test_it_reports_r_times_in_plus_out_trainable_parameters() -> None:
    model = _tiny_llama()
    total_before = sum(p.numel() for p in model.parameters())
    rank = 4
    inject_lora(model, targets="all-linear", rank=rank, alpha=8)

    per_layer = (
        rank * (HIDDEN + HIDDEN)  # q_proj
        + 2 * rank * (HIDDEN + KV_DIM)  # k_proj, v_proj
        + rank * (HIDDEN + HIDDEN)  # o_proj
        + 2 * rank * (HIDDEN + INTER)  # gate_proj, up_proj
        + rank * (INTER + HIDDEN)  # down_proj
    )
    report = parameter_report(model)

    assert report["trainable"] == LAYERS * per_layer
    assert report["total"] == total_before + LAYERS * per_layer
    assert report["trainable_pct"] == pytest.approx(100 * LAYERS * per_layer / report["total"])
    assert report["text"].startswith("trainable ")


def test_it_formats_the_parameter_report_like_7b_to_7m() -> None:
    model = nn.Sequential(nn.Linear(1000, 1000, bias=False), nn.Linear(1000, 1000, bias=False))
    inject_lora(model, targets=["0"], rank=8, alpha=16)

    report = parameter_report(model)

    assert report["trainable"] == 8 * 2000
    assert report["text"] == "trainable 16.0K / total 2.0M (0.79%)"


def test_it_selects_all_linear_without_the_lm_head() -> None:
    model = _tiny_llama()
    names = inject_lora(model, targets="all-linear", rank=2, alpha=2)

    assert len(names) == 7 * LAYERS
    assert "lm_head" not in names
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, LoRALinear)


def test_it_accepts_regex_and_dotted_name_targets() -> None:
    model = _tiny_llama()
    names = inject_lora(model, targets=[r"model\.layers\.0\.mlp\.(gate|up)_proj", "self_attn.o_proj"], rank=2, alpha=2)
    assert names == [
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.1.self_attn.o_proj",
    ]

    other = _tiny_llama()
    assert inject_lora(other, targets=r".*\.1\.self_attn\.k_proj", rank=2, alpha=2) == [
        "model.layers.1.self_attn.k_proj"
    ]


def test_it_rejects_targets_that_match_nothing() -> None:
    model = _tiny_llama()
    with pytest.raises(ValueError, match="qq_proj"):
        inject_lora(model, targets=["q_proj", "qq_proj"], rank=2, alpha=2)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # nothing half-injected


def test_it_refuses_to_inject_twice() -> None:
    model = _tiny_llama()
    inject_lora(model, targets=["q_proj"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="already have LoRA"):
        inject_lora(model, targets=["q_proj"], rank=2, alpha=2)


def test_it_merges_back_into_plain_linears_with_equal_logits() -> None:
    model = _tiny_llama()
    inject_lora(model, targets="all-linear", rank=4, alpha=8)
    _randomise_lora(model)
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    merge_lora(model)

    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert set(model.state_dict()) == set(_tiny_llama().state_dict())  # plain HF names again
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_it_exports_the_adapter_state_dict_by_module_name() -> None:
    model = _tiny_llama()
    inject_lora(model, targets=["q_proj"], rank=4, alpha=8)

    sd = lora_state_dict(model)

    assert sorted(sd) == sorted(f"model.layers.{i}.self_attn.q_proj.lora_{ab}.weight" for i in range(2) for ab in "AB")
    assert sd["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, HIDDEN)
    assert sd["model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (HIDDEN, 4)
    assert not any(t.requires_grad for t in sd.values())


def test_it_reports_memory_by_part() -> None:
    model = _tiny_llama()
    total_params = sum(p.numel() for p in model.parameters())
    inject_lora(model, targets=["q_proj", "v_proj"], rank=4, alpha=8)
    adapter_params = sum(p.numel() for _, p in lora_parameters(model))
    optimizer = torch.optim.AdamW([p for _, p in lora_parameters(model)], lr=1e-3)
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()

    report = memory_report(model, optimizer)

    assert report["base_weights"] == 4 * total_params
    assert report["adapters"] == 4 * adapter_params
    assert report["grads"] == 4 * adapter_params  # only adapters get gradients
    assert report["optimizer_state"] >= 2 * 4 * adapter_params  # AdamW: exp_avg + exp_avg_sq
    assert report["base_bytes_per_param"] == pytest.approx(4.0)
    assert report["total"] == sum(report[k] for k in ("base_weights", "adapters", "optimizer_state", "grads"))


def test_it_formats_a_report_as_one_message_line() -> None:
    parameters = {"trainable": 16_000, "total": 2_000_000, "text": "trainable 16.0K / total 2.0M (0.80%)"}
    memory = {"base_weights": 2**21, "adapters": 2**19, "base_params": 7, "base_bytes_per_param": 0.5164}

    assert format_report(parameters) == "parameters: trainable 16.0K / total 2.0M (0.80%)"
    assert format_report(memory) == (
        "memory: base_weights=2.00MB, adapters=0.50MB, base_params=7, base_bytes_per_param=0.516"
    )
