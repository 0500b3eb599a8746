"""LoRALinear: the formula, PEFT parity, step-0 identity, merge/unmerge, rsLoRA."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

from lora_engine.lora import LoRALinear


def _pair(rank: int = 4, alpha: float = 8.0, dropout: float = 0.0, use_rslora: bool = False, bias: bool = True):
    """Our layer and PEFT's over two identical copies of one base linear, same A and B."""
    torch.manual_seed(0)
    base = nn.Linear(24, 40, bias=bias)
    base_copy = nn.Linear(24, 40, bias=bias)
    base_copy.load_state_dict(base.state_dict())
    ours = LoRALinear(base, rank=rank, alpha=alpha, dropout=dropout, use_rslora=use_rslora)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora)
    peft = PeftLinear(base_copy, "default", config=cfg, r=rank, lora_alpha=alpha)
    with torch.no_grad():
        nn.init.normal_(ours.lora_B.weight, std=0.5)  # non-zero B so the update matters
        peft.lora_A["default"].weight.copy_(ours.lora_A.weight)
        peft.lora_B["default"].weight.copy_(ours.lora_B.weight)
    return ours, peft


def _forward_backward(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("use_rslora", [False, True])
def test_it_matches_peft_outputs_and_gradients(use_rslora: bool) -> None:
    ours, peft = _pair(use_rslora=use_rslora)
    x = torch.randn(3, 7, 24)

    y_ours, gx_ours = _forward_backward(ours, x)
    y_peft, gx_peft = _forward_backward(peft, x)

    torch.testing.assert_close(y_ours, y_peft, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx_ours, gx_peft, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.lora_A.weight.grad, peft.lora_A["default"].weight.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.lora_B.weight.grad, peft.lora_B["default"].weight.grad, atol=1e-5, rtol=0)
    assert ours.lora_B.weight.grad.abs().sum() > 0


def test_it_matches_peft_with_dropout_under_the_same_seed() -> None:
    ours, peft = _pair(dropout=0.3)
    ours.train()
    peft.train()
    x = torch.randn(2, 5, 24)

    torch.manual_seed(123)
    y_ours, gx_ours = _forward_backward(ours, x)
    rng_ours = torch.get_rng_state()
    torch.manual_seed(123)
    y_peft, gx_peft = _forward_backward(peft, x)

    # The same mask, and the generator left in the same state (run-level parity needs both).
    assert torch.equal(rng_ours, torch.get_rng_state())
    torch.testing.assert_close(y_ours, y_peft, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx_ours, gx_peft, atol=1e-5, rtol=0)
    # 1/(1-p) is applied to the (N, r) side in ours, to the input in PEFT: fp32 rounding of
    # values ~40 here, hence a relative tolerance of 1e-6 on top.
    torch.testing.assert_close(ours.lora_A.weight.grad, peft.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours.lora_B.weight.grad, peft.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-6)


def test_it_computes_the_lora_formula() -> None:
    ours, _ = _pair(rank=4, alpha=8.0)
    x = torch.randn(6, 24)
    w, b = ours.base.weight, ours.base.bias
    a, bb = ours.lora_A.weight, ours.lora_B.weight

    expected = x @ w.T + b + (8.0 / 4) * (x @ a.T @ bb.T)  # y = x W^T + (alpha/r) x A^T B^T

    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_it_equals_the_base_layer_at_step_zero() -> None:
    torch.manual_seed(1)
    base = nn.Linear(16, 32)
    x = torch.randn(4, 9, 16)
    expected = base(x).detach()

    layer = LoRALinear(base, rank=8, alpha=16)

    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert torch.equal(layer(x), expected)


def test_it_initialises_a_kaiming_uniform_and_freezes_the_base() -> None:
    torch.manual_seed(2)
    layer = LoRALinear(nn.Linear(256, 64), rank=16, alpha=32)
    bound = 1 / math.sqrt(256)  # kaiming_uniform_(a=sqrt(5)) on fan_in=256

    a = layer.lora_A.weight
    assert a.abs().max() <= bound
    assert a.abs().max() > 0.9 * bound  # really uniform over the full range, not tiny
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad
    assert layer.lora_A.bias is None and layer.lora_B.bias is None


def test_it_uses_rslora_scaling() -> None:
    base = nn.Linear(8, 8)
    assert LoRALinear(base, rank=16, alpha=32).scaling == pytest.approx(2.0)
    assert LoRALinear(nn.Linear(8, 8), rank=16, alpha=32, use_rslora=True).scaling == pytest.approx(8.0)


def test_it_round_trips_merge_and_unmerge() -> None:
    ours, _ = _pair()
    ours.eval()
    x = torch.randn(2, 3, 24)
    w0 = ours.base.weight.detach().clone()
    y0 = ours(x).detach()

    ours.merge()
    assert ours.merged
    y_merged = ours(x).detach()
    expected_w = w0 + ours.scaling * ours.lora_B.weight @ ours.lora_A.weight
    torch.testing.assert_close(ours.base.weight.detach(), expected_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(y_merged, y0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.base(x), y0, atol=1e-5, rtol=0)  # the base alone now does it all

    ours.unmerge()
    assert not ours.merged
    torch.testing.assert_close(ours.base.weight.detach(), w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours(x).detach(), y0, atol=1e-6, rtol=0)


def test_it_ignores_dropout_in_eval_mode() -> None:
    ours, _ = _pair(dropout=0.5)
    x = torch.randn(4, 24)
    ours.eval()
    assert torch.equal(ours(x), ours(x))
    ours.train()
    assert not torch.equal(ours(x), ours(x))


def test_it_keeps_any_leading_shape() -> None:
    ours, _ = _pair()
    for shape in [(24,), (5, 24), (2, 3, 4, 24)]:
        assert ours(torch.randn(*shape)).shape == (*shape[:-1], 40)


def test_it_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(4, 4), rank=2, alpha=1, dropout=1.0)
    with pytest.raises(ValueError, match="dropout_mask"):
        LoRALinear(nn.Linear(4, 4), rank=2, alpha=1, dropout=0.1, dropout_mask="fast")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LoRALinear(nn.Conv1d(4, 4, 1), rank=2, alpha=1)


@pytest.mark.parametrize(
    ("dropout", "input_grad", "dropout_mask"),
    [
        (0.0, True, "bernoulli"),
        (0.2, True, "bernoulli"),
        (0.2, True, "bits"),
        (0.2, False, "bits"),
        (0.0, False, "bits"),
    ],
)
def test_it_gives_the_same_result_on_the_fused_and_the_general_path(
    dropout: float, input_grad: bool, dropout_mask: str
) -> None:
    fused, _ = _pair(dropout=dropout)
    general, _ = _pair(dropout=dropout)
    fused.dropout_mask = general.dropout_mask = dropout_mask
    # A hook on the base makes skipping its __call__ observable, so the layer takes the general path.
    calls = []
    general.base.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 5, 24)

    results = []
    for layer in (fused, general):
        layer.train()
        torch.manual_seed(5)  # same dropout mask
        xi = x.clone().requires_grad_(input_grad)
        y = layer(xi)
        (y * torch.linspace(-1, 1, 40)).sum().backward()
        results.append((y.detach(), xi.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad))

    assert calls == [1]
    for a, b in zip(*results, strict=True):
        if a is None:
            assert b is None
        else:  # fp32 rounding (values up to ~40): the scalings are applied in another order
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)
