"""Training files, tuning jobs, their events and checkpoints.

Rows are written only by ``tunings.services``; these classes hold data, not behaviour.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models

from tuninglab.ids import new_id


class TrainingFile(models.Model):
    """An uploaded JSONL dataset, stored content-addressed under the data dir."""

    class Status(models.TextChoices):
        PROCESSED = "processed"  # valid, usable for training
        ERROR = "error"  # validation failed; see validation_errors

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "file"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32, default="fine-tune")
    sha256 = models.CharField(max_length=64, db_index=True)
    bytes = models.BigIntegerField()
    storage_path = models.CharField(max_length=500, help_text="Relative to TUNINGLAB_DATA_DIR")
    format = models.CharField(max_length=32, blank=True, default="")
    example_count = models.PositiveIntegerField(default=0)
    token_estimate = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices)
    validation_errors = models.JSONField(default=list, blank=True)
    # Dataset stats computed at upload (``{"format", **DatasetStats.as_dict()}``), kept on the row
    # so listing files reads no disk. Null only on rows uploaded before the column existed whose
    # stats file could not be read when migration 0003 backfilled it.
    stats = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Soft delete: the row stays so finished jobs keep their record (and their FK); every
    # lookup by the owner treats a deleted file as missing (404). Bytes go when no live row shares them.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.id} {self.filename}"


class TuningJob(models.Model):
    """One fine-tuning job. The row is the truth about the job, not the broker."""

    class Status(models.TextChoices):
        VALIDATING_FILES = "validating_files"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Method(models.TextChoices):
        LORA = "lora"
        QLORA = "qlora"
        FULL = "full"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "ftjob"), editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tuning_jobs")
    base_model = models.ForeignKey("registry.BaseModel", on_delete=models.PROTECT, related_name="jobs")
    training_file = models.ForeignKey(TrainingFile, on_delete=models.PROTECT, related_name="training_jobs")
    validation_file = models.ForeignKey(
        TrainingFile, on_delete=models.PROTECT, null=True, blank=True, related_name="validation_jobs"
    )
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.LORA)
    # As requested (may hold "auto") and as resolved for the run.
    hyperparameters = models.JSONField(default=dict, blank=True)
    resolved_hyperparameters = models.JSONField(default=dict, blank=True)
    lora_rank = models.PositiveSmallIntegerField(default=8)
    lora_alpha = models.FloatField(default=16.0)
    lora_dropout = models.FloatField(default=0.05)
    target_modules = models.JSONField(default=list, blank=True)
    seed = models.BigIntegerField(default=42)
    suffix = models.CharField(max_length=64, blank=True, default="")
    model_name = models.CharField(
        max_length=64, blank=True, default="", help_text="Registered model (per owner) the result becomes a version of"
    )
    promote_to = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Alias the result moves to when the job succeeds (if it passes the serving check)",
    )
    metadata = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)

    # scheduling
    priority = models.IntegerField(default=0, help_text="Higher runs first")
    resources = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=32, default="cpu")
    # The process layout (``lora_engine.distributed.DistributedSpec.to_dict()``); {} is one process.
    distributed = models.JSONField(default=dict, blank=True)
    # What the worker launched for the latest attempt: {"launcher", "argv" (the config path relative
    # to the job dir), "world_size", "env", "deepspeed_config" (DeepSpeed jobs)}; {} before the first.
    launch_config = models.JSONField(default=dict, blank=True)
    # The create-time memory preflight (``lora_engine.memory_estimate``): per-rank MiB by part, the
    # total and what it was checked against; {} when the base model's config.json was unreadable.
    memory_estimate = models.JSONField(default=dict, blank=True)

    # state and progress
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.VALIDATING_FILES, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    progress = models.FloatField(default=0.0, help_text="0..100")
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    current_loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    trained_tokens = models.BigIntegerField(default=0)
    error = models.JSONField(null=True, blank=True, help_text="{code, message, param}")
    suggestion = models.TextField(blank=True, default="")
    fine_tuned_model = models.CharField(max_length=255, blank=True, default="")

    # execution: at-least-once delivery made safe by the claim + lease + fencing token
    attempt = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    fencing_token = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=255, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True, db_index=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="tuningjob_unique_owner_idempotency_key",
            )
        ]
        indexes = [models.Index(fields=["status", "-priority", "created_at"], name="tuningjob_sched_idx")]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class JobEvent(models.Model):
    """Something that happened to a job: a message or a metrics sample."""

    class Level(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"

    class Type(models.TextChoices):
        MESSAGE = "message"
        METRICS = "metrics"

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "ftevent"), editable=False)
    job = models.ForeignKey(TuningJob, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    type = models.CharField(max_length=8, choices=Type.choices, default=Type.MESSAGE)
    message = models.TextField(blank=True, default="")
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Monotonic order within a job (created_at ties on fast writes).
    seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["job", "seq"]
        indexes = [models.Index(fields=["job", "seq"], name="jobevent_job_seq_idx")]

    def __str__(self) -> str:
        return f"{self.job_id} {self.type} {self.message[:40]}"


class Checkpoint(models.Model):
    """A complete training checkpoint written by the engine (adapter + optimizer + RNG + data position)."""

    id = models.CharField(primary_key=True, max_length=40, default=partial(new_id, "ftckpt"), editable=False)
    job = models.ForeignKey(TuningJob, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict, blank=True)
    path = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "-step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="checkpoint_unique_job_step")]

    def __str__(self) -> str:
        return f"{self.job_id} step {self.step}"
