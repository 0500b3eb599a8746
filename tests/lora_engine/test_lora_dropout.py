"""LoRA dropout: both mask generators are PEFT's dropout in distribution; "bernoulli" is it bit for bit.

PEFT applies ``nn.Dropout(p)`` to the LoRA branch input: every element kept independently
with probability ``1 - p`` and scaled by ``1 / (1 - p)``, so the expected input is ``x``.
``"bits"`` draws other masks from the same seed, so what is checked is the distribution:
the per-element keep probability (with tolerances from the binomial standard deviation),
independence of neighbours (four elements share one 64-bit random word), the scale, the
expected output of the layer (against PEFT's), and that gradients reach ``x``, ``A`` and
``B`` only through kept elements. All seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

from lora_engine.lora import LoRALinear, dropout_keep_mask, inject_lora

MODES = ["bernoulli", "bits"]


def _masks(p: float, mode: str, draws: int, shape: tuple[int, int] = (32, 128)) -> tuple[torch.Tensor, float]:
    """``draws`` successive masks, (draws, *shape) as float 0/1, and the mode's scale."""
    torch.manual_seed(0)
    masks, scale = [], 0.0
    for _ in range(draws):
        keep, scale = dropout_keep_mask(shape, p, mode, "cpu")
        assert keep.dtype == torch.bool and keep.shape == shape
        masks.append(keep.float())
    return torch.stack(masks), scale


def test_bernoulli_mode_draws_the_mask_f_dropout_draws_and_leaves_the_same_rng_state() -> None:
    torch.manual_seed(7)
    keep, scale = dropout_keep_mask((64, 96), 0.1, "bernoulli", "cpu")
    after_ours = torch.get_rng_state()
    torch.manual_seed(7)
    reference = F.dropout(torch.ones(64, 96), 0.1, training=True)

    assert torch.equal(keep, reference != 0)
    assert torch.equal(after_ours, torch.get_rng_state())
    assert scale == pytest.approx(1 / 0.9, rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [0.05, 0.3])
def test_each_element_is_kept_with_probability_one_minus_p(mode: str, p: float) -> None:
    draws = 200
    masks, _ = _masks(p, mode, draws)  # (200, 32, 128): 819,200 Bernoulli samples
    q = 1 - p

    overall = masks.mean().item()
    assert abs(overall - q) <= 4 * math.sqrt(p * q / masks.numel())  # 4 binomial sigmas

    # every position on its own (4096 positions x 200 draws): within 5 sigmas
    per_position = masks.mean(dim=0)
    assert (per_position - q).abs().max().item() <= 5 * math.sqrt(p * q / draws)

    # the four 16-bit lanes of a 64-bit word ("bits") and the elements 0..3 of each group alike
    lanes = masks.reshape(draws, -1, 4).mean(dim=(0, 1))
    assert (lanes - q).abs().max().item() <= 4 * math.sqrt(p * q / (masks.numel() / 4))


@pytest.mark.parametrize("mode", MODES)
def test_neighbouring_elements_are_kept_independently(mode: str) -> None:
    p = 0.3
    masks, _ = _masks(p, mode, 200)
    flat = masks.reshape(200, -1)
    q = 1 - p
    for lag in (1, 2, 3, 4, 5, 128):  # inside one random word, across words, across rows
        both = (flat[:, :-lag] * flat[:, lag:]).mean().item()
        n = flat[:, lag:].numel()
        # P(both kept) = q^2 for independent elements; binomial sigma of that frequency
        assert abs(both - q * q) <= 4 * math.sqrt(q * q * (1 - q * q) / n), lag


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5])
def test_bits_mode_scale_makes_the_dropped_input_unbiased(p: float) -> None:
    levels = 2**16
    drop_levels = round(p * levels)
    _, scale = dropout_keep_mask((4, 4), p, "bits", "cpu")

    # P(drop) = drop_levels / 2^16, within 2^-17 of p; the scale is exactly 1 / P(keep)
    assert abs(drop_levels / levels - p) <= 2**-17
    assert scale * (levels - drop_levels) == levels

    # E[x ⊙ m · scale] = x: the mean over 400 draws is within 5 sigmas per element
    draws = 400
    masks, scale = _masks(p, "bits", draws, shape=(16, 64))
    torch.manual_seed(1)
    x = torch.randn(16, 64)
    mean = (x * masks * scale).mean(dim=0)
    p_eff = drop_levels / levels
    sigma = x.abs() * math.sqrt(p_eff / (1 - p_eff) / draws)
    assert ((mean - x).abs() <= 5 * sigma + 1e-6).all()


def _layers(p: float, mode: str) -> tuple[LoRALinear, nn.Module]:
    torch.manual_seed(0)
    base = nn.Linear(48, 40)
    base_copy = nn.Linear(48, 40)
    base_copy.load_state_dict(base.state_dict())
    ours = LoRALinear(base, rank=8, alpha=16, dropout=p, dropout_mask=mode)
    peft = PeftLinear(base_copy, "default", config=LoraConfig(r=8, lora_alpha=16, lora_dropout=p), r=8, lora_alpha=16)
    with torch.no_grad():
        nn.init.normal_(ours.lora_B.weight, std=0.5)
        peft.lora_A["default"].weight.copy_(ours.lora_A.weight)
        peft.lora_B["default"].weight.copy_(ours.lora_B.weight)
    return ours.train(), peft.train()


@pytest.mark.parametrize("mode", MODES)
def test_the_expected_output_is_peft_s_and_the_no_dropout_output(mode: str) -> None:
    ours, peft = _layers(0.3, mode)
    x = torch.randn(6, 48)
    with torch.no_grad():
        expected = ours.eval()(x)  # no dropout: the mean over masks
        ours.train()
        torch.manual_seed(3)
        samples_ours = torch.stack([ours(x) for _ in range(800)])
        torch.manual_seed(4)
        samples_peft = torch.stack([peft(x) for _ in range(800)])

    for samples in (samples_ours, samples_peft):
        standard_error = samples.std(dim=0) / math.sqrt(len(samples))
        assert ((samples.mean(dim=0) - expected).abs() <= 5 * standard_error + 1e-5).all()
    # and the spread of the output is the same as PEFT's (same per-element variance)
    ratio = samples_ours.var(dim=0).mean() / samples_peft.var(dim=0).mean()
    assert 0.9 <= ratio.item() <= 1.1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("general_path", [False, True])
def test_gradients_reach_x_a_and_b_only_through_kept_elements(mode: str, general_path: bool) -> None:
    p = 0.4
    ours, _ = _layers(p, mode)
    if general_path:
        ours.base.register_forward_hook(lambda *_: None)  # observable hook: the unfused path
    x = torch.randn(5, 48, requires_grad=True)
    g = torch.randn(5, 40)

    torch.manual_seed(11)
    y = ours(x)
    y.backward(g)
    torch.manual_seed(11)
    keep, scale = dropout_keep_mask((5, 48), p, mode, "cpu")  # the mask that forward drew
    assert 0 < keep.sum() < keep.numel()

    w, a, b = ours.base.weight.detach(), ours.lora_A.weight.detach(), ours.lora_B.weight.detach()
    s = ours.scaling
    x_d = x.detach() * keep * scale  # nn.Dropout's output with this mask
    torch.testing.assert_close(y.detach(), F.linear(x.detach(), w, ours.base.bias) + s * x_d @ a.T @ b.T)
    torch.testing.assert_close(ours.lora_A.weight.grad, s * (g @ b).T @ x_d)
    torch.testing.assert_close(ours.lora_B.weight.grad, s * g.T @ (x_d @ a.T))
    lora_grad_x = x.grad - g @ w
    torch.testing.assert_close(lora_grad_x, s * scale * (g @ b @ a) * keep, atol=1e-5, rtol=1e-5)
    # dropped inputs get exactly the base layer's gradient, nothing from the LoRA branch
    assert torch.equal(x.grad[~keep], (g @ w)[~keep])


def test_bits_mode_restores_to_the_same_masks_from_a_saved_rng_state() -> None:
    torch.manual_seed(5)
    dropout_keep_mask((8, 64), 0.1, "bits", "cpu")
    state = torch.get_rng_state()  # what a checkpoint saves
    first, _ = dropout_keep_mask((8, 64), 0.1, "bits", "cpu")
    second, _ = dropout_keep_mask((8, 64), 0.1, "bits", "cpu")
    torch.set_rng_state(state)  # what resume restores
    again, _ = dropout_keep_mask((8, 64), 0.1, "bits", "cpu")

    assert torch.equal(first, again)
    assert not torch.equal(first, second)  # the generator advances: a new mask every call


def test_inject_lora_passes_the_mask_mode_to_every_layer() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    inject_lora(model, targets="all-linear", rank=2, alpha=4, dropout=0.1, dropout_mask="bits")

    assert [m.dropout_mask for m in model if isinstance(m, LoRALinear)] == ["bits", "bits"]
