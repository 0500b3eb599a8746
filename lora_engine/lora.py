"""LoRA: a low-rank update on top of a frozen linear layer, and how to put it into a model.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685. rsLoRA scaling: Kalajdzievski, https://arxiv.org/abs/2312.03732.

For a frozen base weight ``W`` (out x in) LoRA learns ``A`` (r x in) and ``B`` (out x r):

    y  = x W^T + (alpha / r) · dropout(x) A^T B^T        (rsLoRA: alpha / sqrt(r))
    W' = W + (alpha / r) · B A                           (after merge: zero inference overhead)

``A`` starts Kaiming-uniform and ``B`` starts at zero, so at step 0 the model is exactly
the base model. Only ``A`` and ``B`` train: ``r·(in + out)`` parameters per layer.

The module is deliberately one small class (torchtune's ``LoRALinear`` is the model);
the on-disk format is PEFT's (see ``adapter_io``), the code is not.

Dropout is ``x ⊙ m / P(keep)`` with ``m`` an i.i.d. keep mask, as ``nn.Dropout``. The mask
comes from ``dropout_keep_mask``: by default torch's Bernoulli generator, bit for bit the
mask ``F.dropout`` (and so PEFT) draws under the same seed; ``dropout_mask="bits"`` cuts it
from 16 random bits per element, the same distribution for about a quarter of the CPU time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALL_LINEAR = "all-linear"

# A target given as a plain (possibly dotted) module name, e.g. "q_proj" or
# "self_attn.q_proj", matches like PEFT's list form: the full name, or a "."-suffix.
# Anything else is a regular expression matched against the full module name.
_NAME_RE = re.compile(r"[A-Za-z0-9_.]+")

DropoutMask = Literal["bernoulli", "bits"]
DROPOUT_MASKS: tuple[DropoutMask, ...] = ("bernoulli", "bits")
_BITS = 16  # random bits per mask element in "bits" mode: P(drop) resolution 2^-16


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``(alpha/r) · B A``.

    ``y = base(x) + scaling · dropout(x) A^T B^T`` with ``scaling = alpha / r``
    (``alpha / sqrt(r)`` with rsLoRA); merged: ``W' = W + (alpha/r) · B · A``.
    ``base`` may be an ``nn.Linear`` or a bitsandbytes ``Linear4bit`` / ``Linear8bitLt``
    (QLoRA is only a choice of base layer).

    Args:
        base: the layer to adapt; its parameters are frozen here.
        rank: ``r``, the rank of the update.
        alpha: the LoRA ``alpha``; the update is scaled by ``alpha / r``.
        dropout: dropout probability on the LoRA branch input (0 = no dropout call at all).
        dropout_mask: how the keep mask is drawn (see ``dropout_keep_mask``): ``"bernoulli"``
            (default) is the mask PEFT draws under the same seed; ``"bits"`` is cheaper and
            equal in distribution, but other masks.
        use_rslora: scale by ``alpha / sqrt(r)`` instead (stable for large ranks).
        dtype: dtype of ``A``/``B``; default: the base weight's dtype for fp32/fp64 bases,
            else float32 (half-precision or quantized bases keep fp32 adapters, as PEFT does,
            so small updates are not lost to rounding).
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        dropout_mask: DropoutMask = "bernoulli",
        use_rslora: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear-like layers, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {dropout_mask!r}")

        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.rank = rank
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        # A plain float, not an nn.Dropout: with p=0 the forward makes no call at all.
        self.dropout = float(dropout)
        self.dropout_mask = dropout_mask
        self.merged = False

        weight = base.weight
        if dtype is None:
            dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=weight.device, dtype=dtype)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=weight.device, dtype=dtype)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)) (nn.Linear's default, as in PEFT), B = 0: step 0 == base."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)  # (B, T, out)

        lead_shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (B*T, in): all GEMMs run on the 2-D view
        drop, keep_scale = None, 1.0  # dropout: zero the dropped inputs; 1/P(keep) goes on the (B*T, r) side
        if self.dropout > 0.0 and self.training:
            keep, keep_scale = dropout_keep_mask(x2.shape, self.dropout, self.dropout_mask, x2.device)
            # masked_fill with the drop mask: x * keep would first copy the bool mask to floats
            drop = keep.logical_not_()
        if self._can_fuse(x2):
            y = _FusedLoRALinear.apply(
                x2,
                self.base.weight,
                self.base.bias,
                self.lora_A.weight,
                self.lora_B.weight,
                self.scaling,
                drop,
                keep_scale,
            )  # (B*T, out)
            return y.view(*lead_shape, self.out_features)  # (B, T, out)

        # General path (quantized bases, hooked modules, autocast, mixed dtypes): plain
        # module calls, so bitsandbytes / ZeRO-3 / FSDP hooks see every weight use.
        result = self.base(x2)  # (B*T, out)
        x_lora = x2 if x2.dtype == self.lora_A.weight.dtype else x2.to(self.lora_A.weight.dtype)
        if drop is not None:
            x_lora = x_lora.masked_fill(drop, 0.0)  # (B*T, in); 1/P(keep) is in the scaling below
        delta = self.lora_B(self.lora_A(x_lora))  # (B*T, r) -> (B*T, out)
        scaling = self.scaling * keep_scale
        if delta.dtype == result.dtype:
            # in place, scaling fused into the add; a linear's backward never needs its output
            result = result.add_(delta, alpha=scaling)
        else:
            result = result + (delta * scaling).to(result.dtype)
        return result.view(*lead_shape, self.out_features)  # (B, T, out)

    def _can_fuse(self, x2: Tensor) -> bool:
        """True when skipping the base's __call__ is unobservable: a frozen dense nn.Linear, no hooks."""
        base, a = self.base, self.lora_A
        return (
            type(base) is nn.Linear
            and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad)
            and x2.dtype == base.weight.dtype == a.weight.dtype
            and not torch.is_autocast_enabled(x2.device.type)
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (base, a, self.lora_B))
        )

    def _check_mergeable(self) -> None:
        if type(self.base.weight) is not nn.Parameter or not self.base.weight.dtype.is_floating_point:
            raise TypeError(
                f"cannot merge into a {type(self.base).__name__} base (quantized weights); "
                "load the base in full precision and merge there (lora_engine.merge.merge_and_export)"
            )

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """The dense update ``scaling · B A`` (out x in) in the adapter dtype."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (``W += scaling · B A``); forward then skips LoRA."""
        self._check_mergeable()
        if self.merged:
            return
        w = self.base.weight
        w.add_(self.delta_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge()`` (``W -= scaling · B A``), e.g. to continue training."""
        self._check_mergeable()
        if not self.merged:
            return
        w = self.base.weight
        w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}, "
            f"dropout={self.dropout:g}, dropout_mask={self.dropout_mask}, rslora={self.use_rslora}, "
            f"merged={self.merged}"
        )


def dropout_keep_mask(
    shape: torch.Size | Sequence[int], p: float, mode: DropoutMask, device: torch.device | str
) -> tuple[Tensor, float]:
    """A boolean keep mask for dropout with probability ``p``, and ``1 / P(keep)``.

    Every element is kept independently, as in ``nn.Dropout``; the input is then
    ``x ⊙ mask · scale``, so its expected value is ``x``. Both modes draw from torch's default
    generator of ``device``, so a checkpointed RNG state resumes to the same masks.

    - ``"bernoulli"``: ``bernoulli_(1 - p)`` into a bool tensor: the very mask ``F.dropout``
      (and PEFT's ``nn.Dropout``) draws from the same RNG state, and it leaves the RNG in the
      same state, so runs stay step-for-step comparable with PEFT (any dtype of mask gets
      the same values). ~3.7 ns per element on the 2-core AMD EPYC build VM (one double
      drawn per element), +10-15 % of a 2048x2048 layer's forward+backward.
    - ``"bits"``: one 64-bit random word gives 4 elements 16 uniform bits each, an element
      is dropped when its bits fall below ``k = round(p · 2^16)``: ``P(drop) = k / 2^16``
      (within 2^-17 of ``p``) and ``scale = 2^16 / (2^16 - k)``, so ``E[x ⊙ mask · scale] = x``
      exactly. ~1 ns per element (a quarter of the generator calls, no per-element
      floating-point draw). Other masks than PEFT's under the same seed.

    Returns:
        ``(mask, scale)``: ``mask`` a bool tensor of ``shape`` (True = keep).
    """
    if mode == "bernoulli":
        keep = torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p)
        return keep, 1.0 / (1.0 - p)
    levels = 1 << _BITS
    drop_levels = min(round(p * levels), levels - 1)  # P(drop) = drop_levels / 2^16
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64, device=device).random_(-(2**63), None)  # all 64 bits
    bits = words.view(torch.int16)[:n].view(shape)  # uniform over [-2^15, 2^15)
    keep = bits >= drop_levels - levels // 2
    return keep, levels / (levels - drop_levels)


class _FusedLoRALinear(torch.autograd.Function):
    """``y = x W^T + b + s · c · (x ⊙ m) A^T B^T`` for a frozen dense base, hand-written backward.

    ``m`` is the dropout keep mask (passed as its negation ``drop``) and ``c = 1 / P(keep)``
    (no dropout: ``drop`` is None, ``c = 1``).
    Why: through autograd, the LoRA branch costs more than its FLOPs (1.6% of the layer at
    r=16). Here the update is added inside the output GEMM (``addmm_`` with beta=1, no
    (N, out) temporary), and in backward the branch's input gradient is accumulated into
    the base's input gradient in place (``addmm_`` again) instead of autograd allocating a
    second (N, in) tensor and summing. With dropout, ``c`` is applied to the (N, r) tensors,
    not to the (N, in) input, the bool mask (1 byte/element) is what backward keeps besides
    ``x ⊙ m``, and the mask is applied to the branch's input gradient in place.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, drop, keep_scale):
        y = F.linear(x, weight, bias)  # (N, out)
        x_d = x if drop is None else x.masked_fill(drop, 0.0)  # (N, in)
        h = torch.mm(x_d, lora_a.t())  # (N, r)
        if drop is not None:
            h.mul_(keep_scale)
        y.addmm_(h, lora_b.t(), alpha=scaling)  # y += s · h B^T
        ctx.save_for_backward(x_d, h, weight, lora_a, lora_b, drop)
        ctx.scaling = scaling
        ctx.keep_scale = keep_scale
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_d, h, weight, lora_a, lora_b, drop = ctx.saved_tensors
        need_x, _, _, need_a, need_b, _, _, _ = ctx.needs_input_grad
        # (N, r); scaling folded into the small B, dropout's c into the small grad_h
        grad_h = torch.mm(grad_y, lora_b * (ctx.scaling * ctx.keep_scale))
        grad_a = torch.mm(grad_h.t(), x_d) if need_a else None  # (r, in)
        # (h^T g)^T rather than g^T h: same numbers; MKL ran this skinny shape 2x faster at r=16
        grad_b = torch.mm(h.t(), grad_y).mul_(ctx.scaling).t() if need_b else None  # (out, r)
        grad_x = None
        if need_x and drop is None:
            grad_x = torch.mm(grad_y, weight).addmm_(grad_h, lora_a)  # (N, in) = g W + g_h A
        elif need_x:  # the branch's part masked first, then the base's GEMM adds into it: no temporary
            grad_x = torch.mm(grad_h, lora_a).masked_fill_(drop, 0.0).addmm_(grad_y, weight)  # (g_h A) ⊙ m + g W
        return grad_x, None, None, grad_a, grad_b, None, None, None


# --------------------------------------------------------------------------- injection


def output_layer_names(model: nn.Module) -> set[str]:
    """Names of the LM head (never adapted by "all-linear", as in PEFT)."""
    names = {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == "lm_head"}
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (AttributeError, NotImplementedError):
            out = None
        if out is not None:
            names.update(name for name, m in model.named_modules() if m is out)
    return names


def find_target_modules(
    model: nn.Module,
    targets: Sequence[str] | str,
    *,
    skip: Sequence[str] = (),
) -> list[str]:
    """Names of the linear layers selected by ``targets``.

    Args:
        targets: ``"all-linear"`` (every linear layer but the LM head), a list of module
            names matched like PEFT (``"q_proj"`` matches ``...self_attn.q_proj``), or
            regular expressions matched against the full module name (a string that is
            not a plain name is a regex, as in PEFT's ``target_modules="..."``).
        skip: module names (full or last component) never selected.

    Raises:
        ValueError: a target selects nothing, or a selected module already has LoRA.
    """
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty: give module names, regexes or 'all-linear'")

    all_linear = ALL_LINEAR in targets
    names = [t for t in targets if t != ALL_LINEAR and _NAME_RE.fullmatch(t)]
    try:
        regexes = [re.compile(t) for t in targets if t != ALL_LINEAR and not _NAME_RE.fullmatch(t)]
    except re.error as exc:
        raise ValueError(f"invalid target pattern: {exc}") from exc

    excluded = set(skip)
    if all_linear:
        excluded |= output_layer_names(model)

    lora_prefixes = [name + "." for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    found: list[str] = []
    hits: dict[str, int] = dict.fromkeys([*names, *(r.pattern for r in regexes)], 0)
    already: list[str] = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.Linear | LoRALinear):
            continue
        if any(name.startswith(p) for p in lora_prefixes):
            continue  # the base / lora_A / lora_B inside an existing LoRALinear
        if name in excluded or name.rsplit(".", 1)[-1] in excluded:
            continue
        matched = all_linear
        for t in names:
            if name == t or name.endswith("." + t):
                hits[t] += 1
                matched = True
        for rx in regexes:
            if rx.fullmatch(name):
                hits[rx.pattern] += 1
                matched = True
        if matched:
            (already if isinstance(module, LoRALinear) else found).append(name)

    if already:
        raise ValueError(f"modules already have LoRA: {already}")
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        raise ValueError(f"target(s) {missing} matched no linear layer of the model")
    if not found:
        raise ValueError(f"targets {targets} matched no linear layer of the model")
    return found


def inject_lora(
    model: nn.Module,
    *,
    targets: list[str] | str,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    dropout_mask: DropoutMask = "bernoulli",
    use_rslora: bool = False,
) -> list[str]:
    """Wrap the selected linear layers in ``LoRALinear`` and freeze every other parameter.

    ``dropout_mask`` is passed to every layer (see ``dropout_keep_mask``).

    Returns:
        The injected module names (e.g. ``model.layers.0.self_attn.q_proj``), in model order.

    Raises:
        ValueError: bad hyper-parameters or targets that select nothing.
    """
    names = find_target_modules(model, targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        lora = LoRALinear(
            base, rank=rank, alpha=alpha, dropout=dropout, dropout_mask=dropout_mask, use_rslora=use_rslora
        )
        lora.train(base.training)  # an eval-mode model stays in eval mode (no dropout)
        setattr(parent, child, lora)

    lora_ids = {id(p) for _, p in lora_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in lora_ids)
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Every ``(name, LoRALinear)`` in the model."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The adapter parameters, named ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``."""
    for name, module in lora_modules(model):
        prefix = f"{name}." if name else ""
        yield f"{prefix}lora_A.weight", module.lora_A.weight
        yield f"{prefix}lora_B.weight", module.lora_B.weight


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the adapter weights keyed by our module names (no PEFT prefix)."""
    return {name: p.detach().clone() for name, p in lora_parameters(model)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA update into its base weight and put the plain base layer back.

    After this the model has no LoRA modules and the HF parameter names of a plain model,
    so ``save_pretrained`` writes an ordinary checkpoint. Quantized bases raise ``TypeError``.
    """
    for name, module in list(lora_modules(model)):
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.base)
    return model
