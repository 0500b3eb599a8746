"""QLoRA on CPU: bitsandbytes 4-bit / 8-bit base layers with LoRA on top."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from lora_engine.lora import LoRALinear, inject_lora, lora_parameters, merge_lora
from lora_engine.quantize import is_quantized_linear, quantize_base_linears
from lora_engine.report import memory_report, parameter_report
from tests.lora_engine.conftest import build_tiny_llama

VOCAB = 128


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    # Layers of realistic aspect but tiny: big enough that the per-layer quantization
    # constants (code books) do not dominate the bytes-per-parameter figure.
    return build_tiny_llama(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, seed=seed)


def _batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))


def test_it_trains_lora_on_a_4bit_base_and_the_loss_falls() -> None:
    model = _tiny_llama()
    quantized = quantize_base_linears(model, bits=4, compute_dtype=torch.float32)
    inject_lora(model, targets="all-linear", rank=8, alpha=16)
    optimizer = torch.optim.AdamW([p for _, p in lora_parameters(model)], lr=1e-2)
    ids = _batch()
    model.train()

    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    assert len(quantized) == 7 * 2 and "lm_head" not in quantized
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, LoRALinear)
    assert type(q_proj.base).__name__ == "Linear4bit" and q_proj.base.weight.quant_type == "nf4"
    assert q_proj.base.weight.quant_state.nested  # double quantization
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert losses[-1] < losses[0] - 0.3, losses


def test_it_reports_under_0_6_bytes_per_base_parameter_for_4bit() -> None:
    fp32 = _tiny_llama()
    fp32_report = memory_report(fp32)
    total_params = parameter_report(fp32)["total"]
    model = _tiny_llama()
    quantize_base_linears(model, bits=4)
    inject_lora(model, targets="all-linear", rank=8, alpha=16)

    report = memory_report(model)
    params = parameter_report(model)

    assert fp32_report["base_bytes_per_param"] == pytest.approx(4.0)
    # packed nf4 (0.5) + uint8 absmax per 64 weights + the double-quant scales and code books
    assert 0.5 < report["base_bytes_per_param"] <= 0.6
    assert report["base_linear_params"] == fp32_report["base_linear_params"]  # logical, not packed, counts
    # embeddings and norms stay fp32: honest whole-base figure is higher, still far below 4
    assert report["base_bytes_per_param_all"] < 1.0
    assert report["base_other_weights"] == fp32_report["base_other_weights"]
    assert params["total"] == total_params + params["trainable"]


def test_it_runs_the_8bit_path_forward_and_backward() -> None:
    model = _tiny_llama()
    quantize_base_linears(model, bits=8)
    inject_lora(model, targets=["q_proj", "v_proj"], rank=4, alpha=8)
    with torch.no_grad():
        for name, p in lora_parameters(model):
            if "lora_B" in name:
                p.normal_(std=0.02)
    ids = _batch()

    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()

    base = model.model.layers[0].self_attn.q_proj.base
    assert type(base).__name__ == "Linear8bitLt" and base.weight.dtype == torch.int8
    assert torch.isfinite(loss)
    grads = [p.grad for _, p in lora_parameters(model)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    report = memory_report(model)
    assert 1.0 <= report["base_bytes_per_param"] < 1.1  # int8 + one fp32 scale per row


def test_it_keeps_the_4bit_output_close_to_the_fp32_base() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(256, 256))
    nn.init.normal_(layer[0].weight, std=0.02)  # LLM-like normal weights (what nf4 is built for)
    x = torch.randn(8, 256)
    expected = layer(x).detach()

    quantize_base_linears(layer, bits=4)
    out = layer(x).detach()

    assert is_quantized_linear(layer[0])
    assert ((out - expected).norm() / expected.norm()) < 0.15


def test_it_refuses_to_merge_into_a_quantized_base() -> None:
    model = nn.Sequential(nn.Linear(64, 64))
    quantize_base_linears(model, bits=4)
    inject_lora(model, targets=["0"], rank=2, alpha=4)
    with pytest.raises(TypeError, match="full precision"):
        merge_lora(model)


def test_it_quantizes_before_injection_only() -> None:
    model = nn.Sequential(nn.Linear(64, 64))
    inject_lora(model, targets=["0"], rank=2, alpha=4)
    with pytest.raises(ValueError, match="before inject_lora"):
        quantize_base_linears(model, bits=4)
    with pytest.raises(ValueError, match="bits"):
        quantize_base_linears(nn.Sequential(nn.Linear(4, 4)), bits=3)
