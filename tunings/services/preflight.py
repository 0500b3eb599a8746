"""The memory preflight: before a job is queued, estimate one training process's memory and
refuse (400 ``insufficient_memory``) or warn when the job's resources cannot hold it.

The estimate is the engine's (``lora_engine.memory_estimate``), counted from the base model's
config.json and the job's method, LoRA shape, resolved hyperparameters and process layout. The
memory one process has is the job's ``resources.memory_mb``, else the operator's
``TUNINGLAB_RANK_MEMORY_MB`` (0: unknown, nothing is refused). A base model whose config.json
cannot be read or understood gets no estimate: the job is created as before (the worker's
own checks still apply), and the job shows ``memory_estimate: {}``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine.config import TrainConfig
from lora_engine.distributed import DistributedSpec
from lora_engine.memory_estimate import MemoryEstimate, estimate_rank_memory
from registry.models import BaseModel
from tuninglab.errors import InvalidRequestError
from tunings.hyperparameters import QLORA_QUANT_BITS
from tunings.serializers.job_request import JobSpec

INSUFFICIENT_MEMORY = "insufficient_memory"
# Above this share of the available memory the job is created with a warning event.
WARN_FRACTION = 0.85
# config.json of a registered model is a few KiB; anything far larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024
_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Preflight:
    """What the create service stores on the job and, past ``WARN_FRACTION``, the warning to log."""

    estimate: dict[str, Any]
    """``MemoryEstimate.breakdown()`` plus ``available_mb`` and ``summary``; {} without an estimate."""
    warning: str | None = None


def _model_config(base_model: BaseModel) -> dict[str, Any] | None:
    """The base model's config.json (paths relative to DATA_DIR, as the worker resolves them), or None."""
    path = Path(base_model.path)
    if not path.is_absolute():
        path = Path(settings.DATA_DIR) / path
    try:
        config_file = path / "config.json"
        if config_file.stat().st_size > MAX_CONFIG_BYTES:
            return None
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _estimate(*, spec: JobSpec, resolved: dict[str, Any], config: dict[str, Any]) -> MemoryEstimate | None:
    def knob(name: str) -> Any:
        value = resolved.get(name)
        return _ENGINE_DEFAULTS[name] if value is None or value == "auto" else value

    method = spec.tuning_method
    cuda = int(spec.resources.get("gpus") or 0) > 0
    try:
        return estimate_rank_memory(
            config,
            method=method,
            quant_bits=QLORA_QUANT_BITS if method == "qlora" else None,
            rank=int(spec.lora.get("rank") or _ENGINE_DEFAULTS["rank"]),
            target_modules=list(spec.lora.get("target_modules") or _ENGINE_DEFAULTS["target_modules"]),
            batch_size=int(resolved["batch_size"]),
            grad_accum_steps=int(knob("grad_accum_steps")),
            max_seq_len=int(knob("max_seq_len")),
            gradient_checkpointing=bool(knob("gradient_checkpointing")),
            spec=spec.distributed,
            cuda=cuda,
            # The recipe keeps a LoRA/QLoRA base in half precision only on GPUs.
            half_precision_base=cuda and knob("precision") in ("bf16", "fp16"),
        )
    except ValueError:  # a config.json this estimate does not understand: no estimate
        return None


def _suggestion(*, spec: JobSpec, resolved: dict[str, Any]) -> str:
    """What lowers the estimate most for this job, in the order worth trying."""
    layout: DistributedSpec = spec.distributed
    ideas = []
    if spec.tuning_method == "full":
        ideas.append("tuning_method 'lora' (only the adapters train)")
    elif spec.tuning_method == "lora":
        ideas.append("tuning_method 'qlora' (a 4-bit base, about 1/7 of fp32)")
    if not (layout.strategy == "fsdp" or (layout.strategy == "deepspeed" and layout.zero_stage == 3)):
        if spec.tuning_method == "qlora":
            ideas.append("distributed strategy 'deepspeed' with zero_stage 2 (shards gradients and optimizer states)")
        else:
            ideas.append(
                "distributed strategy 'fsdp' or 'deepspeed' with zero_stage 3 (each process keeps 1/N of the weights)"
            )
    if not resolved.get("gradient_checkpointing"):
        ideas.append("hyperparameters.gradient_checkpointing true")
    ideas.append("a smaller batch_size or max_seq_len")
    ideas.append("more memory per process (resources.memory_mb, if your workers have it)")
    return "Try " + "; ".join(ideas) + "."


def memory_preflight(*, spec: JobSpec, base_model: BaseModel, resolved: dict[str, Any]) -> Preflight:
    """Estimate the job's per-process memory and compare it with what a process has.

    Raises:
        InvalidRequestError: ``insufficient_memory`` (param ``resources.memory_mb``, or
            ``distributed`` when the limit is the operator's), the estimate exceeds the memory.
    """
    config = _model_config(base_model)
    estimate = _estimate(spec=spec, resolved=resolved, config=config) if config is not None else None
    if estimate is None:
        return Preflight(estimate={})
    given = spec.resources.get("memory_mb")
    available = int(given if given is not None else settings.TUNINGLAB["RANK_MEMORY_MB"])
    stored = {**estimate.breakdown(), "available_mb": available or None, "summary": estimate.describe()}
    if not available:
        return Preflight(estimate=stored)
    per_process = "resources.memory_mb" if given is not None else "the workers' memory per process"
    if estimate.total_mb > available:
        raise InvalidRequestError(
            f"This job needs an estimated {estimate.total_mb:,.0f} MiB per training process, more than the "
            f"{available:,} MiB available ({per_process}): {estimate.describe()}.",
            code=INSUFFICIENT_MEMORY,
            param="resources.memory_mb" if given is not None else "distributed",
            suggestion=_suggestion(spec=spec, resolved=resolved),
        )
    if estimate.total_mb > WARN_FRACTION * available:
        share = 100 * estimate.total_mb / available
        return Preflight(
            estimate=stored,
            warning=f"Memory is tight: an estimated {estimate.total_mb:,.0f} MiB per training process is "
            f"{share:.0f}% of the {available:,} MiB available ({per_process}); the estimate can be off by "
            f"about a quarter. {estimate.describe()}.",
        )
    return Preflight(estimate=stored)


__all__ = ["INSUFFICIENT_MEMORY", "WARN_FRACTION", "Preflight", "memory_preflight"]
