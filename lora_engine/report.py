"""What LoRA buys: trainable vs total parameters, and memory by part.

Counts are honest for quantized bases: a 4-bit weight is stored packed two per byte
(``Params4bit.numel()`` is half the real parameter count), so parameter counts use the
logical shape from the quant state, and byte counts add the quantization state (absmax
scales, the double-quantization scales and code books) to the packed storage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lora_engine.lora import lora_parameters, output_layer_names


def _logical_numel(p: Tensor) -> int:
    """Number of model parameters a tensor stands for (4-bit packing undone)."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None and getattr(p, "bnb_quantized", False):
        return int(torch.Size(quant_state.shape).numel())
    return p.numel()


def _extra_tensors(p: Tensor, module: nn.Module | None) -> list[Tensor]:
    """Tensors a quantized weight needs besides its own storage (scales, code books)."""
    out: list[Tensor] = []
    stack: list[Any] = [getattr(p, "quant_state", None)]  # Params4bit: QuantState (+ nested state2)
    while stack:
        state = stack.pop()
        if state is None:
            continue
        for value in vars(state).values():
            if isinstance(value, Tensor):
                out.append(value)
            elif type(value).__name__ == "QuantState":
                stack.append(value)
    # Int8Params: per-row scales live on the weight until the first forward, then on module.state.
    scb = getattr(p, "SCB", None)
    if scb is None and module is not None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    if isinstance(scb, Tensor):
        out.append(scb)
    return out


class _ByteCounter:
    """Sums tensor bytes, counting shared storage once (tied weights, shared code books)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def __call__(self, t: Tensor) -> int:
        if t.device.type == "meta":
            return 0
        nbytes = t.numel() * t.element_size()
        key = (t.data_ptr(), nbytes)
        if nbytes == 0 or key in self._seen:
            return 0
        self._seen.add(key)
        return nbytes


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def parameter_report(model: nn.Module) -> dict:
    """Trainable vs total parameters: the "7B -> 7M" figure.

    Returns:
        ``{"trainable": int, "total": int, "trainable_pct": float, "text": str}`` with text
        like ``"trainable 7.0M / total 7.0B (0.10%)"``.
    """
    trainable = total = 0
    for p in model.parameters():
        n = _logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    pct = 100.0 * trainable / total if total else 0.0
    pct_text = f"{pct:.2f}" if pct >= 0.01 or pct == 0 else f"{pct:.2g}"
    return {
        "trainable": trainable,
        "total": total,
        "trainable_pct": pct,
        "text": f"trainable {_human(trainable)} / total {_human(total)} ({pct_text}%)",
    }


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Bytes held by each part of a LoRA training run (parameters and their state, not activations).

    Returns a dict of byte counts:
        ``base_weights`` every frozen, non-adapter parameter (packed 4/8-bit storage plus its
        quantization state; embeddings, norms and the LM head included), split into
        ``base_linear_weights`` (the linear layers of the blocks, what quantization targets)
        and ``base_other_weights``; ``adapters`` (LoRA A/B); ``optimizer_state``; ``grads``;
        ``total`` (their sum). And:
        ``base_bytes_per_param`` bytes per parameter of the base linear layers (4.0 fp32,
        ~0.52 nf4 + double quant, ~1.0 int8): the figure QLoRA changes;
        ``base_bytes_per_param_all`` the same over every base parameter (embeddings too);
        ``base_params`` / ``base_linear_params`` / ``adapter_params`` logical counts.
    """
    count = _ByteCounter()
    adapter_ids = {id(p) for _, p in lora_parameters(model)}
    adapters = adapter_params = 0
    for _, p in lora_parameters(model):
        adapters += count(p)
        adapter_params += p.numel()

    # Which module owns each parameter, to find bnb state kept on the module and to tell
    # the blocks' linear layers from embeddings / norms / the LM head.
    output_layers = output_layer_names(model)
    owner: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), (name, module))

    linear_bytes = other_bytes = linear_params = base_params = 0
    for p in model.parameters():
        if id(p) in adapter_ids:
            continue
        name, module = owner.get(id(p), ("", None))
        nbytes = count(p) + sum(count(t) for t in _extra_tensors(p, module))
        n = _logical_numel(p)
        base_params += n
        is_block_linear = isinstance(module, nn.Linear) and name.removesuffix(".base") not in output_layers
        if is_block_linear:
            linear_bytes += nbytes
            linear_params += n
        else:
            other_bytes += nbytes

    grads = sum(count(p.grad) for p in model.parameters() if p.grad is not None)
    optimizer_state = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optimizer_state += sum(count(v) for v in state.values() if isinstance(v, Tensor))

    base_weights = linear_bytes + other_bytes
    return {
        "base_weights": base_weights,
        "base_linear_weights": linear_bytes,
        "base_other_weights": other_bytes,
        "adapters": adapters,
        "optimizer_state": optimizer_state,
        "grads": grads,
        "total": base_weights + adapters + optimizer_state + grads,
        "base_params": base_params,
        "base_linear_params": linear_params,
        "adapter_params": adapter_params,
        "base_bytes_per_param": linear_bytes / linear_params if linear_params else 0.0,
        "base_bytes_per_param_all": base_weights / base_params if base_params else 0.0,
    }


def format_report(rep: dict) -> str:
    """One readable line for a ``parameter_report`` or ``memory_report`` dict (byte counts in MB)."""
    if "text" in rep:
        return f"parameters: {rep['text']}"
    parts = []
    for key, value in rep.items():
        if isinstance(value, int) and (key in ("total", "grads", "adapters", "optimizer_state") or "weights" in key):
            parts.append(f"{key}={value / 2**20:.2f}MB")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(f"{key}={value}")
    return "memory: " + ", ".join(parts)
