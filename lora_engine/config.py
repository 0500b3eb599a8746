"""`TrainConfig`: the one frozen, typed description of a training run.

Django builds it from the job row and writes it as JSON; the engine reads it with
`TrainConfig.from_json(path)` and never looks at settings or env vars. Every
contradiction is rejected up front in `__post_init__` with a `ConfigError` naming
the field, so a job fails in milliseconds instead of after the model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_engine.distributed import DistributedSpec, check_compatible
from lora_engine.errors import ConfigError

METHODS = ("lora", "qlora", "full")
SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
SELECTS = ("last", "best")


@dataclass(frozen=True)
class TrainConfig:
    """All knobs of one training run (see the field docstrings)."""

    base_model_dir: str
    """Local Hugging Face model directory (config.json, tokenizer, safetensors weights)."""

    train_file: str
    """JSONL training file, any format `lora_engine.formats` understands."""

    output_dir: str
    """Run directory: `adapter/`, `checkpoints/`, `train.log` are written here."""

    validation_file: str | None = None
    """Optional JSONL validation file; excludes `validation_split`."""

    base_model_name: str | None = None
    """Name recorded as `base_model_name_or_path` in the adapter config (default: base_model_dir)."""

    method: str = "lora"
    """"lora" (frozen base + LoRA), "qlora" (quantized frozen base + LoRA) or "full" fine-tuning."""

    rank: int = 8
    """LoRA rank r (>= 1)."""

    alpha: float = 16.0
    """LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""

    dropout: float = 0.05
    """Dropout on the LoRA input, in [0, 1)."""

    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Linear module names that get LoRA, or ("all-linear",)."""

    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)."""

    quant_bits: int | None = None
    """4 (nf4) or 8 for the frozen base linears; required by, and only allowed with, method="qlora"."""

    compute_dtype: str = "float32"
    """Dtype the quantized base computes in: "float32", "bfloat16" or "float16"."""

    learning_rate: float = 2e-4
    """Peak AdamW learning rate (> 0)."""

    weight_decay: float = 0.0
    """AdamW weight decay (>= 0)."""

    lr_scheduler: str = "cosine"
    """"cosine", "linear" (both decay to 0 after warmup) or "constant" (after warmup)."""

    warmup_ratio: float = 0.0
    """Fraction of the optimizer steps spent in linear warmup, in [0, 1)."""

    num_epochs: int | None = None
    """Passes over the training data. Exactly one of num_epochs/max_steps; neither means 1 epoch."""

    max_steps: int | None = None
    """Run length in optimizer steps (the data order cycles over epochs as needed)."""

    batch_size: int = 4
    """Micro-batch size (examples, or packed rows, per forward pass)."""

    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None or 0 disables clipping (norm still logged)."""

    precision: str = "fp32"
    """"fp32", "bf16" or "fp16" autocast. Low precision is CUDA-only; on CPU the run falls back to fp32."""

    device: str = "auto"
    """"auto" (CUDA if available), "cpu" or "cuda"."""

    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""

    seed: int = 0
    """Seed for init, dropout and the data order (the order is a pure function of seed and epoch)."""

    max_seq_len: int = 512
    """Examples longer than this are truncated (and counted in a warning)."""

    packing: bool = False
    """Concatenate examples into max_seq_len rows (labels stay per example)."""

    validation_split: float = 0.0
    """Fraction of the training examples held out for eval when no validation_file, in [0, 1)."""

    eval_every: int = 0
    """Evaluate every N optimizer steps (and at the end); 0 = only at the end if there is eval data."""

    select: str = "last"
    """Which weights the run writes as its result: "last" (after the final step) or "best"
    (the evaluated step with the lowest validation loss; needs validation data)."""

    checkpoint_every: int = 0
    """Write a resumable checkpoint every N optimizer steps; 0 disables periodic checkpoints."""

    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep (>= 1)."""

    resume: bool = False
    """Resume from the newest complete checkpoint in output_dir/checkpoints, if any."""

    stop_file: str | None = None
    """When this path exists the run checkpoints at the next step boundary and exits 3."""

    metrics_file: str | None = None
    """JSON lines are appended here as well as printed on stdout."""

    step_delay_s: float = 0.0
    """Test hook: sleep this long after every optimizer step so tests can stop/kill mid-run."""

    memory_limit_mb: int | None = None
    """CPU stand-in for OOM: fail with out_of_memory when the process RSS exceeds this."""

    log_every: int = 1
    """Emit a metrics line every N optimizer steps (the last step is always reported)."""

    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    """Process layout and sharding engine (`lora_engine.distributed`); a dict from JSON. The
    launcher (torchrun / deepspeed) starts `world_size` copies of this run; `batch_size` is the
    global micro-batch they split."""

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the config stays hashable and immutable.
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        else:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not isinstance(self.distributed, DistributedSpec):
            object.__setattr__(self, "distributed", DistributedSpec.from_dict(self.distributed))
        if self.num_epochs is None and self.max_steps is None:
            object.__setattr__(self, "num_epochs", 1)
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, param: str, message: str) -> None:
            if not ok:
                raise ConfigError(message, param=param)

        for name in ("base_model_dir", "train_file", "output_dir"):
            need(isinstance(getattr(self, name), str) and bool(getattr(self, name)), name, f"{name} is required")
        need(self.method in METHODS, "method", f"method must be one of {METHODS}")
        need(_is_int(self.rank) and self.rank >= 1, "rank", "rank must be an integer >= 1")
        need(_is_num(self.alpha) and self.alpha > 0, "alpha", "alpha must be > 0")
        need(_is_num(self.dropout) and 0 <= self.dropout < 1, "dropout", "dropout must be in [0, 1)")
        need(
            len(self.target_modules) > 0 and all(isinstance(t, str) and t for t in self.target_modules),
            "target_modules",
            "target_modules must be a non-empty list of module names or ['all-linear']",
        )
        if self.method == "qlora":
            need(self.quant_bits in (4, 8), "quant_bits", "method 'qlora' needs quant_bits 4 or 8")
        else:
            need(self.quant_bits is None, "quant_bits", "quant_bits is only allowed with method 'qlora'")
        need(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"compute_dtype must be one of {COMPUTE_DTYPES}")
        need(_is_num(self.learning_rate) and self.learning_rate > 0, "learning_rate", "learning_rate must be > 0")
        need(_is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "weight_decay must be >= 0")
        need(self.lr_scheduler in SCHEDULERS, "lr_scheduler", f"lr_scheduler must be one of {SCHEDULERS}")
        need(
            _is_num(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "warmup_ratio", "warmup_ratio must be in [0, 1)"
        )
        need(
            not (self.num_epochs is not None and self.max_steps is not None),
            "max_steps",
            "set either num_epochs or max_steps, not both",
        )
        if self.num_epochs is not None:
            need(_is_int(self.num_epochs) and self.num_epochs >= 1, "num_epochs", "num_epochs must be an integer >= 1")
        if self.max_steps is not None:
            need(_is_int(self.max_steps) and self.max_steps >= 1, "max_steps", "max_steps must be an integer >= 1")
        need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "batch_size must be an integer >= 1")
        need(
            _is_int(self.grad_accum_steps) and self.grad_accum_steps >= 1,
            "grad_accum_steps",
            "grad_accum_steps must be an integer >= 1",
        )
        need(
            self.max_grad_norm is None or (_is_num(self.max_grad_norm) and self.max_grad_norm >= 0),
            "max_grad_norm",
            "max_grad_norm must be >= 0 or null",
        )
        need(self.precision in PRECISIONS, "precision", f"precision must be one of {PRECISIONS}")
        need(self.device in DEVICES, "device", f"device must be one of {DEVICES}")
        need(_is_int(self.seed) and self.seed >= 0, "seed", "seed must be an integer >= 0")
        need(_is_int(self.max_seq_len) and self.max_seq_len >= 8, "max_seq_len", "max_seq_len must be an integer >= 8")
        need(
            _is_num(self.validation_split) and 0 <= self.validation_split < 1,
            "validation_split",
            "validation_split must be in [0, 1)",
        )
        need(
            not (self.validation_file and self.validation_split > 0),
            "validation_split",
            "set either validation_file or validation_split, not both",
        )
        need(_is_int(self.eval_every) and self.eval_every >= 0, "eval_every", "eval_every must be an integer >= 0")
        need(self.select in SELECTS, "select", f"select must be one of {SELECTS}")
        need(
            self.select != "best" or bool(self.validation_file) or self.validation_split > 0,
            "select",
            'select "best" needs validation data: set validation_file or validation_split',
        )
        need(
            _is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "checkpoint_every must be an integer >= 0",
        )
        need(
            _is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
            "keep_checkpoints",
            "keep_checkpoints must be an integer >= 1",
        )
        need(_is_num(self.step_delay_s) and self.step_delay_s >= 0, "step_delay_s", "step_delay_s must be >= 0")
        need(
            self.memory_limit_mb is None or (_is_int(self.memory_limit_mb) and self.memory_limit_mb >= 1),
            "memory_limit_mb",
            "memory_limit_mb must be an integer >= 1 or null",
        )
        need(_is_int(self.log_every) and self.log_every >= 1, "log_every", "log_every must be an integer >= 1")
        check_compatible(
            self.distributed,
            method=self.method,
            batch_size=self.batch_size,
            select=self.select,
            precision=self.precision,
        )

    # --- (de)serialisation -------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict; unknown keys are an error (typos must not pass silently)."""
        if not isinstance(data, dict):
            raise ConfigError("config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}", param=unknown[0])
        missing = [n for n in ("base_model_dir", "train_file", "output_dir") if n not in data]
        if missing:
            raise ConfigError(f"{missing[0]} is required", param=missing[0])
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a config written by `to_json` (or by the worker)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["target_modules"] = list(self.target_modules)
        out["distributed"] = self.distributed.to_dict()
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON text; also write it to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def scale(self) -> float:
        """The LoRA scaling factor the layers apply."""
        return self.alpha / (self.rank**0.5) if self.use_rslora else self.alpha / self.rank


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


__all__ = ["COMPUTE_DTYPES", "METHODS", "PRECISIONS", "SCHEDULERS", "SELECTS", "TrainConfig"]
