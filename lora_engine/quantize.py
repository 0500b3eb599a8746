"""QLoRA base layers: swap frozen ``nn.Linear`` weights for bitsandbytes 4-bit / 8-bit ones.

QLoRA (Dettmers et al., https://arxiv.org/abs/2305.14314) is LoRA on top of a quantized,
frozen base: 4-bit NormalFloat (nf4) weights with double quantization (the per-block
absmax scales are themselves quantized to 8 bit), de-quantized block by block to the
compute dtype inside each matmul. It is a choice of base layer, not a class tree:
``quantize_base_linears`` then ``inject_lora`` as usual.

bitsandbytes 0.50.2 runs ``Linear4bit`` and ``Linear8bitLt`` forward and backward on the
CPU, so this path is real (only slow) on machines without a GPU. Weights are quantized on
the device they already live on, so the same code runs unchanged on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lora_engine.lora import ALL_LINEAR, LoRALinear, find_target_modules

NF4_BLOCKSIZE = 64  # bitsandbytes' default block size for 4-bit weights


def _bnb():
    # Imported on first use: bitsandbytes costs ~1.5 s to import on top of torch (2-core CPU
    # box) and only QLoRA runs need it, while every run imports this module through train.py.
    import bitsandbytes as bnb

    return bnb


def _to_4bit(linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    bnb = _bnb()
    device = linear.weight.device
    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=True,  # double quantization of the absmax scales
        quant_type="nf4",
        device="meta",  # no throw-away fp32 allocation; the real weight is set below
    )
    # Params4bit quantizes when moved to a real device (its `.to` is where bnb does it).
    q.weight = bnb.nn.Params4bit(
        linear.weight.data.detach().to(torch.float32),
        requires_grad=False,
        blocksize=NF4_BLOCKSIZE,
        compress_statistics=True,
        quant_type="nf4",
        module=q,
    ).to(device)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.detach().to(compute_dtype).clone(), requires_grad=False)
    return q


def _to_8bit(linear: nn.Linear, threshold: float) -> nn.Module:
    bnb = _bnb()
    device = linear.weight.device
    q = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,  # store int8 + per-row scales, not a float copy
        threshold=threshold,
        device="meta",
    )
    # Int8Params quantizes only on a move *from the CPU*, so stage the weight there.
    q.weight = bnb.nn.Int8Params(
        linear.weight.data.detach().to("cpu", torch.float32), requires_grad=False, has_fp16_weights=False
    ).to(device)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    return q


def quantize_base_linears(
    model: nn.Module,
    *,
    bits: int,
    compute_dtype: torch.dtype = torch.float32,
    targets: Sequence[str] | str = ALL_LINEAR,
    skip: Sequence[str] = ("lm_head",),
    int8_threshold: float = 6.0,
) -> list[str]:
    """Replace the selected ``nn.Linear`` layers by frozen bitsandbytes quantized layers.

    Call it before ``inject_lora`` (the LoRA branch then sits on top of the quantized base).

    Args:
        bits: 4 (nf4 + double quant, ``Linear4bit``) or 8 (LLM.int8, ``Linear8bitLt``).
        compute_dtype: dtype the 4-bit weights are de-quantized to for each matmul
            (float32 on CPU; bfloat16 on GPUs that support it).
        targets: as in ``inject_lora``; default every linear layer.
        skip: never quantized (the LM head stays in full precision, as in QLoRA).
        int8_threshold: LLM.int8 outlier threshold (bitsandbytes/HF default 6.0).

    Returns:
        The names of the quantized modules.

    Raises:
        ValueError: bad ``bits``, or the model already has LoRA layers.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("quantize the base before inject_lora: the model already has LoRA layers")

    names = [
        name
        for name in find_target_modules(model, targets, skip=skip)
        # only dense fp layers: a layer that is already quantized stays as it is
        if type(model.get_submodule(name)) is nn.Linear
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        q = _to_4bit(linear, compute_dtype) if bits == 4 else _to_8bit(linear, int8_threshold)
        setattr(parent, child, q)
    return names


def is_quantized_linear(module: nn.Module) -> bool:
    """True for bitsandbytes 4-bit / 8-bit linear layers (without importing bnb if unused)."""
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and type(weight).__name__ in ("Params4bit", "Int8Params")
