"""Per-rank memory of a training run, estimated from the base model's config.json (no torch).

The create-time memory preflight (``tunings.services.preflight``) asks this module whether a
job fits the memory its processes have. Everything is counted from ``config.json`` (vocabulary,
hidden and MLP sizes, layers, attention and key/value heads, tied embeddings) and the run's
knobs; no model is built. Each part below says which allocation of which engine it counts, so a
wrong number can be traced to one line rather than a fitted factor.

One rank's peak is the larger of two moments (``total_mb``):

* **loading and wrapping** (``load_peak_mb``): every rank loads the whole base model
  (``from_pretrained``; safetensors pages become resident as the engine first reads them), then
  the strategy wraps it: DDP broadcasts every parameter and buffer from rank 0 through one
  coalesced flat copy (``torch.distributed._broadcast_coalesced``, buckets of 250 MiB); FSDP and
  ZeRO-3 copy this rank's shard out of the whole weights before those are freed.
* **training** (``train_peak_mb``): the resident (possibly sharded) weights, adapters, gradients,
  AdamW states, the engine's buffers, what ZeRO-3 / FSDP gather for compute, and the activations
  autograd saves for one micro-batch of ``batch_size / world_size`` rows of ``max_seq_len``
  tokens (the recipe keeps one micro-batch alive at a time; gradient accumulation adds none).

Activation counts were taken with ``torch.autograd.graph.saved_tensors_hooks`` on transformers'
Llama decoder layer (SDPA attention; fp32): per token and layer it saves ``5h + 2kv + 3I`` floats
(h: hidden, kv: key/value width, I: MLP width), plus, per LoRA-wrapped linear, the rank-r output
of ``A`` and the layer input where no other op keeps it (``o_proj``: h, ``down_proj``: I); full
fine-tuning saves ``8h + 2kv + 4I`` (the norms' and projections' inputs for their weight
gradients). Outside the layers the loss keeps the log-softmax of the logits (V floats per
token). With gradient checkpointing a layer keeps only its input (h) and one layer is recomputed
at a time. Llama-family models (Llama, Mistral, Qwen2) share this layout; others are estimated as
if they did.

Measured against real runs (peak RSS minus RSS before the model loads, 2 CPU ranks):
``benchmarks/memory_preflight.py`` writes ``benchmarks/results/memory_preflight.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lora_engine.distributed import DistributedSpec

MIB = 2**20
FP32 = 4
ADAM_STATES = 2  # AdamW's exp_avg and exp_avg_sq, fp32, per trainable parameter

# The linears of a Llama-style decoder layer, by the name LoRA targets them with.
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
LAYER_LINEARS = ATTENTION_LINEARS + MLP_LINEARS
ALL_LINEAR = "all-linear"

# bitsandbytes NF4 (QLoRA): two weights per byte, one fp32 absmax per 64-weight block (the
# engine quantizes without double quantization), plus the 16-entry code book per tensor.
NF4_BYTES_PER_PARAM = 0.5 + FP32 / 64
# LLM.int8: one byte per weight plus one fp32 scale per output row (SCB).
INT8_BYTES_PER_PARAM = 1.0

# DDP broadcasts the module's state from rank 0 at construction in flat buckets of this size
# (``DistributedDataParallel.broadcast_bucket_size``).
DDP_BROADCAST_BUCKET_BYTES = 250 * MIB
# DeepSpeed ZeRO-3 defaults the generated config keeps (deepspeed/runtime/zero/config.py):
# parameters of fewer elements stay whole on every rank; a coalesced prefetch gathers up to
# ``prefetch_bucket_size`` elements into one flat buffer and then copies each parameter out of
# it (``torch.cat`` in partition_parameters.py), and gathered parameters stay until
# ``max_live_parameters`` elements are live — on a model smaller than that, ZeRO-3 keeps the
# whole model gathered from the first forward of a step to its backward.
ZERO3_PERSISTENCE_THRESHOLD = 100_000
ZERO3_PREFETCH_BUCKET = 50_000_000
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
# Code a rank loads after the model-load mark, whatever the model's size (measured as RSS across
# the call on this project's pinned versions): ``from_pretrained`` imports the model's modelling
# code and maps its safetensors; ``deepspeed.initialize`` imports the ZeRO optimizer and its ops.
MODEL_CODE_MB = 16.0
DEEPSPEED_CODE_MB = 48.0


@dataclass(frozen=True)
class ModelShape:
    """The parameter layout of a Llama-style causal LM, read from its config.json."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Raises ``ValueError`` naming the first missing or malformed field."""
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

        def need(*names: str, default: int | None = None) -> int:
            for name in names:
                value = text.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
            if default is not None:
                return default
            raise ValueError(f"config.json has no positive integer {names[0]}")

        hidden = need("hidden_size", "n_embd", "d_model")
        heads = need("num_attention_heads", "n_head")
        return cls(
            vocab=need("vocab_size"),
            hidden=hidden,
            intermediate=need("intermediate_size", "n_inner", default=4 * hidden),
            layers=need("num_hidden_layers", "n_layer"),
            heads=heads,
            kv_heads=need("num_key_value_heads", default=heads),
            head_dim=need("head_dim", default=hidden // heads),
            tied=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        )

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each linear of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_width),
            "k_proj": (h, self.kv_width),
            "v_proj": (h, self.kv_width),
            "o_proj": (self.q_width, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def total_params(self) -> int:
        return self.layers * self.layer_linear_params + self.embedding_params + self.lm_head_params + self.norm_params

    def param_sizes(self) -> list[int]:
        """Element counts of every base parameter tensor (ZeRO-3 partitions per tensor)."""
        sizes = [a * b for a, b in self.linear_shapes().values()] * self.layers
        sizes += [self.hidden] * (2 * self.layers + 1) + [self.embedding_params]
        if not self.tied:
            sizes.append(self.lm_head_params)
        return sizes


def targeted_linears(target_modules: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The decoder-layer linears a LoRA target list selects (``all-linear``: all seven)."""
    targets = set(target_modules)
    if ALL_LINEAR in targets:
        return LAYER_LINEARS
    # A plain name matches as a suffix ("self_attn.q_proj" selects q_proj), as the engine's does.
    return tuple(n for n in LAYER_LINEARS if any(t == n or t.endswith("." + n) for t in targets))


@dataclass(frozen=True)
class MemoryEstimate:
    """One rank's memory in MiB, by part (see the module docstring for what each counts)."""

    strategy: str
    """"none", "ddp", "fsdp", "zero2" or "zero3"."""
    world_size: int
    tokens_per_rank: int
    """Rows x max_seq_len of one micro-batch on one rank."""
    base_weights_mb: float
    """The frozen (or, full fine-tuning: trained) base weights this rank keeps between uses."""
    adapters_mb: float
    gradients_mb: float
    optimizer_mb: float
    """AdamW states, plus DeepSpeed's fp32 master partition."""
    gathered_mb: float
    """FSDP / ZeRO-3: parameters gathered for compute, with the all-gather's flat buffer."""
    engine_buffers_mb: float
    """DDP gradient buckets, DeepSpeed's reduce bucket and gradient partitions."""
    activations_mb: float
    load_peak_mb: float
    train_peak_mb: float
    runtime_mb: float
    """Code loaded with the model and the engine (`MODEL_CODE_MB`, `DEEPSPEED_CODE_MB`), in both moments."""
    host_offload_mb: float
    """What DeepSpeed offload keeps in host memory on a GPU run (0 on CPU, where it is counted above)."""
    total_mb: float

    def breakdown(self) -> dict[str, Any]:
        """The parts as a JSON-ready dict (MiB rounded to 0.1)."""
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line for messages: the total and its largest parts."""
        parts = [
            ("weights", self.base_weights_mb),
            ("gathered", self.gathered_mb),
            ("adapters", self.adapters_mb),
            ("gradients", self.gradients_mb),
            ("optimizer", self.optimizer_mb),
            ("engine buffers", self.engine_buffers_mb),
            ("activations", self.activations_mb),
            ("code", self.runtime_mb),
        ]
        shown = ", ".join(f"{name} {_mib(value)}" for name, value in parts if value >= 0.05)
        where = "training" if self.train_peak_mb >= self.load_peak_mb else "loading"
        layout = self.strategy if self.world_size == 1 else f"{self.strategy}, {self.world_size} processes"
        return (
            f"~{self.total_mb:,.0f} MiB per process ({layout}; peak while {where}; "
            f"training: {shown}; loading: {self.load_peak_mb:,.0f})"
        )


def _mib(value: float) -> str:
    """Whole MiB, one decimal below 10 (a LoRA adapter of a small model is a fraction of one)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def strategy_label(spec: DistributedSpec) -> str:
    return f"zero{spec.zero_stage}" if spec.strategy == "deepspeed" else spec.strategy


def _lora_params(shape: ModelShape, linears: tuple[str, ...], rank: int) -> int:
    shapes = shape.linear_shapes()
    return shape.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in linears)


def saved_floats_per_token(shape: ModelShape, *, method: str, linears: tuple[str, ...], rank: int) -> float:
    """Floats autograd keeps per token for the whole layer stack plus the loss, without gradient
    checkpointing (counts in the module docstring; ``linears``: `targeted_linears`)."""
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    if method == "full":
        per_layer = 8 * h + 2 * kv + 4 * i
    else:
        per_layer = 5 * h + 2 * kv + 3 * i + rank * len(linears)
        per_layer += h if "o_proj" in linears else 0
        per_layer += i if "down_proj" in linears else 0
    return shape.layers * per_layer + shape.vocab


def _layer_floats_per_token(shape: ModelShape, *, method: str, linears: tuple[str, ...], rank: int) -> float:
    return (saved_floats_per_token(shape, method=method, linears=linears, rank=rank) - shape.vocab) / shape.layers


def estimate_rank_memory(
    model_config: dict[str, Any],
    *,
    method: str,
    quant_bits: int | None,
    rank: int,
    target_modules: list[str] | tuple[str, ...],
    batch_size: int,
    grad_accum_steps: int,
    max_seq_len: int,
    gradient_checkpointing: bool,
    spec: DistributedSpec,
    cuda: bool = False,
    half_precision_base: bool = False,
) -> MemoryEstimate:
    """Estimate one rank's peak memory for a run (see the module docstring).

    Args:
        model_config: the base model's config.json, as a dict.
        method: "lora", "qlora" or "full"; ``quant_bits`` 4 or 8 with "qlora".
        batch_size: the global micro-batch (each rank takes ``batch_size / world_size`` rows);
            ``grad_accum_steps`` does not change the peak (one micro-batch is alive at a time).
        cuda: the run trains on GPUs: DeepSpeed offload then moves optimizer states to host memory.
        half_precision_base: the frozen base is loaded in bf16/fp16 (LoRA on GPUs with that precision).

    Raises:
        ValueError: the config lacks a field the estimate needs.
    """
    del grad_accum_steps  # documented above: accumulation keeps no extra activations alive
    shape = ModelShape.from_config(model_config)
    label = strategy_label(spec)
    world = spec.world_size
    full = method == "full"
    linears = () if full else targeted_linears(target_modules)

    # ---- weights: bytes of the base model as loaded, and as this rank keeps it
    dtype_bytes = 2 if half_precision_base and not full else FP32
    linear_params = shape.layers * shape.layer_linear_params
    other_params = shape.total_params - linear_params
    if method == "qlora":
        per_linear = NF4_BYTES_PER_PARAM if quant_bits == 4 else INT8_BYTES_PER_PARAM
        base_bytes = linear_params * per_linear + other_params * dtype_bytes
    else:
        base_bytes = shape.total_params * dtype_bytes
    full_load_bytes = shape.total_params * dtype_bytes  # from_pretrained reads every weight unquantized
    if label == "fsdp":
        resident_base = base_bytes / world
    elif label == "zero3":
        sizes = shape.param_sizes()
        kept = sum(n for n in sizes if n < ZERO3_PERSISTENCE_THRESHOLD)
        resident_base = (kept + (shape.total_params - kept) / world) * dtype_bytes
    else:
        resident_base = base_bytes

    # ---- trainable parameters, gradients, optimizer
    trainable = shape.total_params if full else _lora_params(shape, linears, rank)
    adapters = 0.0 if full else trainable * FP32
    if label == "fsdp":
        adapters /= world
    shard = world if label in ("fsdp", "zero2", "zero3") else 1
    optimizer = ADAM_STATES * trainable * FP32 / shard
    gradients = trainable * FP32 / shard
    buffers = 0.0
    if label == "ddp":
        # The reducer's flat buckets hold a second copy of every trainable gradient.
        buffers = trainable * FP32
    elif label in ("zero2", "zero3"):
        # Our fp32 AdamW is the client optimizer: DeepSpeed still keeps an fp32 master copy of this
        # rank's partition, reduces through a bucket (as many elements as are trained, at most
        # reduce_bucket_size) and holds whole gradients until they are reduced.
        optimizer += trainable * FP32 / world
        buffers = trainable * FP32 + trainable * FP32
    if label == "fsdp":
        # Unsharded gradients of the block being reduced-scattered (one block at a time).
        buffers = trainable * FP32 / shape.layers
    host = 0.0
    if cuda and spec.offload_optimizer:
        host = optimizer
        optimizer = 0.0

    # ---- what sharding engines gather for compute
    gathered = 0.0
    block_bytes = shape.layer_linear_params * dtype_bytes + 2 * shape.hidden * dtype_bytes
    if label == "fsdp":
        # FSDP2: the root (embeddings, final norm, LM head) stays unsharded through the step; a
        # block is all-gathered (output + this rank's copy-in buffer) while the next is prefetched.
        root = (shape.embedding_params + shape.lm_head_params + shape.hidden) * dtype_bytes
        gathered = root + 2 * block_bytes * (1 + 1 / world)
    elif label == "zero3":
        sizes = shape.param_sizes()
        partitioned = sum(n for n in sizes if n >= ZERO3_PERSISTENCE_THRESHOLD)
        live = min(partitioned, ZERO3_MAX_LIVE_PARAMETERS)
        flat = min(partitioned, ZERO3_PREFETCH_BUCKET)
        gathered = (live + flat) * dtype_bytes

    # ---- activations of one micro-batch on this rank
    rows = max(1, math.ceil(batch_size / world))
    tokens = rows * max_seq_len
    layer = _layer_floats_per_token(shape, method=method, linears=linears, rank=rank)
    if gradient_checkpointing:
        # Each layer keeps its input; backward recomputes one layer with its full saved set.
        saved = shape.layers * shape.hidden + layer + shape.vocab
    else:
        saved = saved_floats_per_token(shape, method=method, linears=linears, rank=rank)
    # At the start of backward the loss's gradient w.r.t. the logits (V) and one layer's
    # activation gradients (about the size of its saved set) are alive on top of the saved ones.
    activations = tokens * (saved + shape.vocab + layer) * FP32

    # ---- the two moments
    runtime = (MODEL_CODE_MB + (DEEPSPEED_CODE_MB if spec.strategy == "deepspeed" else 0.0)) * MIB
    if label == "ddp":
        load = full_load_bytes + min(full_load_bytes, DDP_BROADCAST_BUCKET_BYTES) + trainable * FP32
    elif label in ("fsdp", "zero3"):
        load = full_load_bytes + resident_base + adapters
    else:
        load = full_load_bytes + (adapters if not full else 0.0)
    load += runtime
    train = resident_base + adapters + gradients + optimizer + buffers + gathered + activations + runtime
    peak = max(load, train)
    return MemoryEstimate(
        strategy=label,
        world_size=world,
        tokens_per_rank=tokens,
        base_weights_mb=resident_base / MIB,
        adapters_mb=adapters / MIB,
        gradients_mb=gradients / MIB,
        optimizer_mb=optimizer / MIB,
        gathered_mb=gathered / MIB,
        engine_buffers_mb=buffers / MIB,
        activations_mb=activations / MIB,
        load_peak_mb=load / MIB,
        train_peak_mb=train / MIB,
        runtime_mb=runtime / MIB,
        host_offload_mb=host / MIB,
        total_mb=peak / MIB,
    )


__all__ = [
    "MemoryEstimate",
    "ModelShape",
    "estimate_rank_memory",
    "saved_floats_per_token",
    "strategy_label",
    "targeted_linears",
]
