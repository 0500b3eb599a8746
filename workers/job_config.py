"""TuningJob row → ``lora_engine.config.TrainConfig`` (the engine never reads settings).

The jobs service resolves hyperparameters (``auto`` → numbers) into
``resolved_hyperparameters``; the LoRA shape and seed live in their own columns. This
module maps both onto engine field names, fixes every path under ``DATA_DIR``, and decides
``resume``. Paths are never taken from user input: a hyperparameter cannot point the run at
another job's files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine.config import TrainConfig
from tunings.models import TuningJob

log = logging.getLogger(__name__)

# The engine's default learning rate; OpenAI's `learning_rate_multiplier` scales it.
BASE_LEARNING_RATE = 2e-4
# Periodic checkpoints make a lost worker cost at most this many steps (resume).
DEFAULT_CHECKPOINT_EVERY = 50

# Engine fields a job's hyperparameters may set. Paths, `resume` and `device` are ours.
TUNABLE_FIELDS = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "lr_scheduler",
        "warmup_ratio",
        "num_epochs",
        "max_steps",
        "batch_size",
        "grad_accum_steps",
        "max_grad_norm",
        "precision",
        "gradient_checkpointing",
        "max_seq_len",
        "packing",
        "validation_split",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "step_delay_s",
        "memory_limit_mb",
        "log_every",
        "use_rslora",
        "quant_bits",
        "compute_dtype",
        "rank",
        "alpha",
        "dropout",
        "target_modules",
    }
)
# OpenAI / PEFT spellings → engine names.
ALIASES = {
    "n_epochs": "num_epochs",
    "epochs": "num_epochs",
    "lora_rank": "rank",
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "gradient_accumulation_steps": "grad_accum_steps",
    "warmup": "warmup_ratio",
}


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files live: ``DATA_DIR/jobs/<job_id>/...``."""

    job_dir: Path
    run_dir: Path
    stop_file: Path

    def config_file(self, attempt: int) -> Path:
        return self.job_dir / f"attempt-{attempt}.json"

    def log_file(self, attempt: int) -> Path:
        return self.job_dir / f"attempt-{attempt}.log"

    @property
    def checkpoints_manifest(self) -> Path:
        return self.run_dir / "checkpoints" / "manifest.json"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"


def job_paths(job_id: str) -> JobPaths:
    """Paths for ``job_id`` under the current ``DATA_DIR``."""
    job_dir = Path(settings.DATA_DIR) / "jobs" / job_id
    return JobPaths(job_dir=job_dir, run_dir=job_dir / "run", stop_file=job_dir / "STOP")


def data_path(relative_or_absolute: str) -> Path:
    """Stored paths are relative to ``DATA_DIR``; absolute ones (operator-registered models) stay."""
    p = Path(relative_or_absolute)
    return p if p.is_absolute() else Path(settings.DATA_DIR) / p


@dataclass(frozen=True)
class BuiltConfig:
    """The config plus the hyperparameter keys we did not understand (reported as a warning)."""

    config: TrainConfig
    ignored: list[str] = field(default_factory=list)


def _engine_hyperparameters(job: TuningJob) -> tuple[dict[str, Any], list[str]]:
    raw = dict(job.resolved_hyperparameters or {})
    # Before the jobs service resolved them (or for rows made by hand), use the request.
    for key, value in (job.hyperparameters or {}).items():
        raw.setdefault(key, value)
    out: dict[str, Any] = {}
    ignored: list[str] = []
    multiplier = raw.pop("learning_rate_multiplier", None)
    for key, value in raw.items():
        if value is None or value == "auto":
            continue  # the engine's default is the resolution of "auto"
        name = ALIASES.get(key, key)
        if name not in TUNABLE_FIELDS:
            ignored.append(key)
            continue
        out[name] = value
    if multiplier not in (None, "auto") and "learning_rate" not in out:
        out["learning_rate"] = BASE_LEARNING_RATE * float(multiplier)
    if "target_modules" in out and isinstance(out["target_modules"], str):
        out["target_modules"] = [out["target_modules"]]
    return out, sorted(ignored)


def deleted_input_file(job: TuningJob) -> tuple[str, str] | None:
    """``(param, file_id)`` of the first input file of ``job`` that its owner deleted, else None.

    Deleting a file is refused while a job that is not finished uses it, but a retry copies a
    finished job's file ids into a new queued job; such a job must fail with a clear code
    instead of training on bytes that may be gone (or, when shared, that the owner disowned).
    """
    for param, file in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file is not None and file.deleted_at is not None:
            return param, file.id
    return None


def build_train_config(job: TuningJob, *, attempt: int | None = None) -> BuiltConfig:
    """The TrainConfig for the job's current (or given) attempt.

    Raises ``lora_engine.errors.ConfigError`` (code ``invalid_config``, with ``param``) when the
    combination is contradictory, before any process is spawned.
    """
    attempt = job.attempt if attempt is None else attempt
    paths = job_paths(job.id)
    hp, ignored = _engine_hyperparameters(job)

    values: dict[str, Any] = {
        "method": job.method,
        "rank": job.lora_rank,
        "alpha": float(job.lora_alpha),
        "dropout": float(job.lora_dropout),
        "seed": int(job.seed),
        "checkpoint_every": DEFAULT_CHECKPOINT_EVERY,
    }
    if job.target_modules:
        values["target_modules"] = list(job.target_modules)
    if job.method == "qlora":
        values["quant_bits"] = 4
    values.update(hp)
    if job.method != "qlora":
        values.pop("quant_bits", None)

    values.update(
        base_model_dir=str(data_path(job.base_model.path)),
        base_model_name=job.base_model.name,
        train_file=str(data_path(job.training_file.storage_path)),
        validation_file=str(data_path(job.validation_file.storage_path)) if job.validation_file_id else None,
        output_dir=str(paths.run_dir),
        stop_file=str(paths.stop_file),
        metrics_file=str(paths.run_dir / "metrics.jsonl"),
        # Resume whenever a previous attempt may have left a checkpoint; the engine picks the
        # newest *complete* one from the manifest (or starts fresh when there is none).
        resume=attempt > 1 or paths.checkpoints_manifest.exists(),
    )
    if values.get("validation_file"):
        values.pop("validation_split", None)
    return BuiltConfig(config=TrainConfig.from_dict(values), ignored=ignored)
