"""TuningJob row → ``lora_engine.config.TrainConfig``: the job's values plus where its files live.

The field values (method, LoRA shape, seed, hyperparameters) come from
``tunings.hyperparameters.train_config_values``; this module adds every path under
``DATA_DIR`` and decides ``resume``. Paths are never taken from user input: a
hyperparameter cannot point the run at another job's files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine.config import TrainConfig
from tuninglab import datapaths
from tunings.hyperparameters import train_config_values, unknown_hyperparameters
from tunings.models import TuningJob


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files live: ``DATA_DIR/jobs/<job_id>/...``."""

    job_dir: Path
    run_dir: Path
    stop_file: Path

    def config_file(self, attempt: int) -> Path:
        return self.job_dir / f"attempt-{attempt}.json"

    def deepspeed_config_file(self, attempt: int) -> Path:
        """The DeepSpeed JSON config of a ``deepspeed`` attempt, saved next to its run config."""
        return self.job_dir / f"attempt-{attempt}.deepspeed.json"

    def log_file(self, attempt: int) -> Path:
        return self.job_dir / f"attempt-{attempt}.log"

    def attempt_dir(self, attempt: int) -> Path:
        """Where attempt ``attempt`` trains: a dir of its own, written by its child only (a
        fenced-out child that keeps running can spoil nothing the next attempt reads)."""
        return self.run_dir / f"attempt-{attempt}"

    def earlier_checkpoint_roots(self, attempt: int) -> list[Path]:
        """Checkpoint roots attempt ``attempt`` may start from, oldest first: every earlier
        attempt's, and the dir all attempts shared before attempts had their own (a job running
        across the upgrade)."""
        return [self.run_dir / "checkpoints", *(self.attempt_dir(n) / "checkpoints" for n in range(1, attempt))]


def job_paths(job_id: str) -> JobPaths:
    """Paths for ``job_id`` under the current ``DATA_DIR``."""
    job_dir = datapaths.job_dir(job_id)
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
    values: dict[str, Any] = train_config_values(job)
    values.update(
        base_model_dir=str(data_path(job.base_model.path)),
        base_model_name=job.base_model.name,
        train_file=str(data_path(job.training_file.storage_path)),
        validation_file=str(data_path(job.validation_file.storage_path)) if job.validation_file_id else None,
        output_dir=str(paths.attempt_dir(attempt)),
        stop_file=str(paths.stop_file),
        metrics_file=str(paths.attempt_dir(attempt) / "metrics.jsonl"),
        # Validated at create time; TrainConfig checks it again against the method and batch.
        distributed=dict(job.distributed or {}),
        # The runner sets it once it has adopted an earlier attempt's checkpoint into this
        # attempt's dir (workers.runner, lora_engine.manifest.adopt_checkpoint).
        resume=False,
    )
    return BuiltConfig(config=TrainConfig.from_dict(values), ignored=unknown_hyperparameters(job))
