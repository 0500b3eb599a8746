"""The one JSON shape of a tuning job (OpenAI's ``fine_tuning.job`` + our extras), its events and checkpoints.

Plain functions rather than DRF serializer classes: the output is read-only, and the
``openai`` package and our SDK depend on these exact keys, so they are spelled out here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any

from django.utils import timezone

from lora_engine.distributed import DistributedSpec
from registry.naming import fine_tuned_model_name
from tunings.hyperparameters import OPENAI_HYPERPARAMETERS
from tunings.models import Checkpoint, JobEvent, TuningJob
from tunings.selectors.jobs import QueueInfo


def unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def _estimated_finish(job: TuningJob) -> int | None:
    if job.status != TuningJob.Status.RUNNING or job.eta_seconds is None:
        return None
    return unix(timezone.now() + timedelta(seconds=job.eta_seconds))


def progress_text(job: TuningJob) -> str:
    """``"60%"``: floor, so 99.7 % of a running job never reads as done."""
    return f"{int(job.progress or 0)}%"


def launch_config_for_tenant(launch_config: dict[str, Any] | None) -> dict[str, Any]:
    """The job's ``launch_config`` with the interpreter named, not located (its path is the server's).

    The rest is generated from the job alone: launcher flags, the config file relative to the job
    dir, the DeepSpeed config.
    """
    out = dict(launch_config or {})
    argv = out.get("argv")
    if isinstance(argv, list) and argv:
        out["argv"] = [PurePath(str(argv[0])).name, *argv[1:]]
    return out


def job_to_dict(job: TuningJob, *, queue_info: QueueInfo) -> dict[str, Any]:
    """Serialize a job without querying.

    Args:
        job: with ``owner`` and ``base_model`` selected.
        queue_info: the job's entry from ``tuning_job_queue_info``, computed once per page.
    """
    resolved = job.resolved_hyperparameters or {}
    hyperparameters = {name: resolved.get(name, "auto") for name in OPENAI_HYPERPARAMETERS}
    extra_hp = {k: v for k, v in resolved.items() if k not in OPENAI_HYPERPARAMETERS}
    is_adapter = job.method != TuningJob.Method.FULL
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "created_at": unix(job.created_at),
        "finished_at": unix(job.finished_at),
        "model": job.base_model.name,
        "fine_tuned_model": job.fine_tuned_model or None,
        "organization_id": job.owner.username,
        "status": job.status,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "training_file": job.training_file_id,
        "validation_file": job.validation_file_id,
        "result_files": [],
        "trained_tokens": job.trained_tokens,
        "error": job.error or None,
        "seed": job.seed,
        "suffix": job.suffix or None,
        "model_name": job.model_name or None,
        "promote_to": job.promote_to or None,
        "user_provided_suffix": job.suffix or None,
        "metadata": job.metadata or {},
        "estimated_finish": _estimated_finish(job),
        "integrations": [],
        # --- extras (LLM Tuning Lab) ---
        "tuning_method": job.method,
        "lora": (
            {
                "rank": job.lora_rank,
                "alpha": job.lora_alpha,
                "dropout": job.lora_dropout,
                "target_modules": list(job.target_modules or []),
            }
            if is_adapter
            else None
        ),
        "training_options": extra_hp,
        "progress": round(float(job.progress or 0.0), 2),
        "progress_text": progress_text(job),
        "loss": job.current_loss,
        "eval_loss": job.eval_loss,
        "current_step": job.current_step,
        "total_steps": job.total_steps,
        "learning_rate": job.learning_rate,
        "tokens_per_second": job.tokens_per_second,
        "eta_seconds": job.eta_seconds,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "priority": job.priority,
        "resources": job.resources or {},
        # The full spec, defaults filled in ({} on the row is one process).
        "distributed": DistributedSpec.from_dict(job.distributed or None).to_dict(),
        "launch_config": launch_config_for_tenant(job.launch_config),
        # The create-time memory preflight: per-rank MiB by part ({} when no estimate was possible).
        "memory_estimate": job.memory_estimate or {},
        "queue": job.queue,
        "queue_position": queue_info.position,
        "estimated_start": unix(queue_info.estimated_start),
        "started_at": unix(job.started_at),
        "suggestion": job.suggestion or None,
    }


def job_status_to_dict(job: TuningJob, *, queue_info: QueueInfo) -> dict[str, Any]:
    """``GET /v1/tunings.get``: the job object with the seed contract's ``"progress": "60%"``.

    ``progress`` is text here (the seed API promised ``{"status", "loss", "progress": "60%"}``);
    the number moves to ``progress_percent``. Every other key is the job object's.
    """
    body = job_to_dict(job, queue_info=queue_info)
    body["progress_percent"] = body["progress"]
    body["progress"] = body["progress_text"]
    return body


# The event ``data`` keys a tenant may see. Events also carry detail for operators (the worker's
# host name, the child's pid, absolute checkpoint and adapter paths, the training log tail with
# server paths in its tracebacks): it stays in the stored event (admin, logs) and is dropped here.
# An allow-list rather than a deny-list, so a key a future event adds stays internal until listed.
EVENT_DATA_KEYS = frozenset(
    {
        # state changes and their errors
        "status",
        "attempt",
        "resume",
        "queue",
        "hyperparameters",
        "fine_tuned_model",
        "model_version",
        "alias",
        "code",
        "param",
        "suggestion",
        "retry_of",
        "retried_as",
        "priority",
        "previous_priority",
        # metrics lines (``lora_engine`` ``ProgressWriter.metrics``) and checkpoints
        "step",
        "total_steps",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "trained_tokens",
        "progress",
        "eta_s",
        "eval_loss",
    }
)


def event_data_for_tenant(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tenant-visible part of an event's ``data``: only ``EVENT_DATA_KEYS``."""
    if not isinstance(data, dict):
        return None if data is None else {}
    return {key: value for key, value in data.items() if key in EVENT_DATA_KEYS}


def event_to_dict(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event.id,
        "created_at": unix(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event_data_for_tenant(event.data),
    }


def checkpoint_to_dict(checkpoint: Checkpoint, job: TuningJob) -> dict[str, Any]:
    """A checkpoint by its step and model name; ``Checkpoint.path`` (a server path) stays internal."""
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint.id,
        "created_at": unix(checkpoint.created_at),
        "fine_tuned_model_checkpoint": f"{fine_tuned_model_name(job)}:ckpt-step-{checkpoint.step}",
        "step_number": checkpoint.step,
        "metrics": checkpoint.metrics or {},
        "fine_tuning_job_id": job.id,
    }
