"""Job creation: look up the model and files of a validated ``JobSpec``, resolve ``"auto"``, queue.

Parsing the request body is ``tunings.serializers.job_request``; the hyperparameter rules are
``tunings.hyperparameters``; moving the job ``validating_files → queued`` is
``tunings.services.state``. The worker is woken only after the create commits.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from lora_engine.distributed import DistributedSpec, check_compatible
from lora_engine.errors import ConfigError
from registry.models import BaseModel
from registry.naming import default_model_name
from tuninglab.errors import IdempotencyError, InvalidRequestError, NotFoundError, TooManyRequestsError
from tuninglab.services import user_row_lock
from tunings.hyperparameters import HYPERPARAMETERS, check_run_limits, resolve_hyperparameters
from tunings.models import JobEvent, TrainingFile, TuningJob
from tunings.selectors.queue import waiting_count
from tunings.serializers.job_request import INVALID_DISTRIBUTED, JobSpec, distributed_error
from tunings.services.dispatch import dispatch_job
from tunings.services.preflight import memory_preflight
from tunings.services.state import job_event_add, tuning_job_queue


def _usable_file(*, owner: Any, file_id: str, param: str) -> TrainingFile:
    """The caller's processed fine-tune file. Another owner's file, or a deleted one, is as unknown
    as a missing one (404)."""
    file = TrainingFile.objects.filter(id=file_id, owner=owner, deleted_at__isnull=True).first()
    if file is None:
        raise NotFoundError(f"No such file: {file_id}.", code="not_found", param=param)
    if file.status != TrainingFile.Status.PROCESSED:
        raise InvalidRequestError(
            f"File {file_id} failed validation and cannot be used for training.",
            code="file_not_validated",
            param=param,
            suggestion="Fix the lines listed in the file's validation_errors and upload it again.",
        )
    if file.purpose != "fine-tune":
        raise InvalidRequestError(
            f"File {file_id} has purpose {file.purpose!r}; training needs 'fine-tune'.",
            code="invalid_file_purpose",
            param=param,
        )
    return file


def _lock_live_files(*, files: list[TrainingFile | None]) -> None:
    """Lock the rows of ``files`` (inside a transaction) and 404 if one was deleted meanwhile."""
    ids = {f.id for f in files if f is not None}
    live = set(
        TrainingFile.objects.select_for_update()
        .filter(id__in=ids, deleted_at__isnull=True)
        .order_by("id")  # a fixed lock order: two creates never wait on each other crosswise
        .values_list("id", flat=True)
    )
    for file, param in zip(files, ("training_file", "validation_file"), strict=True):
        if file is not None and file.id not in live:
            raise NotFoundError(f"No such file: {file.id}.", code="not_found", param=param)


def _check_queued_quota(*, owner: Any) -> None:
    """Refuse one more waiting job over ``MAX_QUEUED_JOBS_PER_USER`` (call inside the create's transaction).

    Locks the owner's user row first, so two concurrent creates cannot both take the last place
    (the claim locks the same row; SQLite serialises writers anyway).
    """
    cap = int(settings.TUNINGLAB["MAX_QUEUED_JOBS_PER_USER"])
    user_row_lock(user_id=owner.pk)
    waiting = waiting_count(owner.pk)
    if waiting >= cap:
        raise TooManyRequestsError(
            f"You have {waiting} jobs waiting to start; at most {cap} may wait at once.",
            code="too_many_queued_jobs",
            suggestion="Wait until some of your queued jobs start, or cancel the ones you no longer need "
            "(POST /v1/fine_tuning/jobs/<id>/cancel), then create this job again.",
        )


def _check_distributed(
    *, spec: DistributedSpec, method: str, batch_size: int, hp_param: str, select: str, precision: str
) -> None:
    """Refuse a process layout the run cannot train with (400 ``invalid_distributed``).

    After ``"auto"`` is resolved: whether the batch splits over the processes depends on it.
    """
    top = int(HYPERPARAMETERS["batch_size"].high)
    if spec.world_size > top:
        raise InvalidRequestError(
            f"{spec.world_size} processes (nproc_per_node x nnodes) is more than the largest batch_size ({top}): "
            "each process needs at least one example of every batch.",
            code=INVALID_DISTRIBUTED,
            param="distributed.nproc_per_node",
            suggestion=f"Use at most {top} processes in all.",
        )
    try:
        check_compatible(spec, method=method, batch_size=batch_size, select=select, precision=precision)
    except ConfigError as exc:
        if exc.param in ("select", "precision"):
            raise InvalidRequestError(
                f"{exc.message}.",
                code=INVALID_DISTRIBUTED,
                param=f"{hp_param}.{exc.param}",
                suggestion='Use select "last" (FSDP / ZeRO-3) or precision "bf16" (FSDP), or another strategy.',
            ) from exc
        if exc.param != "batch_size":
            raise distributed_error(exc) from exc
        fits = -(-batch_size // spec.world_size) * spec.world_size
        raise InvalidRequestError(
            f"{exc.message}.",
            code=INVALID_DISTRIBUTED,
            param=f"{hp_param}.batch_size",
            suggestion=f'Set batch_size to a multiple of {spec.world_size} (e.g. {fits}), or leave it "auto".',
        ) from exc


def _layout(spec: DistributedSpec) -> str:
    """`` (deepspeed ZeRO-3, 4 processes on 2 nodes)`` for the created event; "" for one process."""
    if not spec.is_distributed:
        return ""
    engine = f"deepspeed ZeRO-{spec.zero_stage}" if spec.strategy == "deepspeed" else spec.strategy
    nodes = f" on {spec.nnodes} nodes" if spec.nnodes > 1 else ""
    procs = f"{spec.world_size} process" + ("es" if spec.world_size != 1 else "")
    return f" ({engine}, {procs}{nodes})"


def tuning_job_record_launch(*, job_id: str, token: int, launch_config: dict[str, Any]) -> bool:
    """Store what the worker launches for the attempt holding ``token`` (argv, DeepSpeed config).

    Call it inside the attempt's fenced transaction, before the process starts: the row then
    shows what ran even when the launch fails. False when the attempt no longer owns the job.
    """
    updated = TuningJob.objects.filter(id=job_id, status=TuningJob.Status.RUNNING, fencing_token=token).update(
        launch_config=launch_config
    )
    return updated == 1


def queue_for_resources(resources: dict[str, Any]) -> str:
    """Celery queue by resources: any GPU → ``gpu``, else ``cpu``."""
    return "gpu" if int(resources.get("gpus") or 0) > 0 else "cpu"


def _insert_job(*, idempotency_key: str | None, owner: Any, **fields: Any) -> TuningJob:
    """INSERT the job row (inside the create's transaction).

    Raises:
        IdempotencyError: ``idempotency_key`` already created another job of ``owner``.
    """
    if idempotency_key is None:
        # Without a key the (owner, key) constraint cannot fail, so there is nothing to recover
        # from and no savepoint to pay for (two round trips per create). Any other integrity
        # error aborts the whole create anyway.
        return TuningJob.objects.create(owner=owner, idempotency_key=None, **fields)
    try:
        # Savepoint: on PostgreSQL a failed INSERT poisons the transaction unless rolled back,
        # and the lookup below must still run in it.
        with transaction.atomic():
            return TuningJob.objects.create(owner=owner, idempotency_key=idempotency_key, **fields)
    except IntegrityError:
        # The (owner, idempotency_key) constraint: a backstop behind tuninglab.idempotency
        # (e.g. the key's record expired after 24 h but the job it created is still here).
        existing = TuningJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        raise IdempotencyError(
            f"Idempotency-Key {idempotency_key!r} already created job {existing.id}.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
            suggestion=f"Fetch job {existing.id}, or use a new key for a new job.",
        ) from None


def tuning_job_create(*, owner: Any, spec: JobSpec, idempotency_key: str | None = None) -> TuningJob:
    """Create a job from a validated spec: checks files and model, resolves ``"auto"``, queues it.

    One transaction: the job row, its events and the move to ``queued`` commit together; the
    task is dispatched only after that commit (``transaction.on_commit``).

    Raises:
        NotFoundError: a file that does not exist or belongs to someone else (param names the field).
        InvalidRequestError: unknown base model, unvalidated file, ...
        InvalidRequestError: ``limit_exceeded``, the run is past an operator quota (steps,
            checkpoints, trained tokens); ``param`` names the hyperparameter to change.
        InvalidRequestError: ``invalid_distributed``, the process layout does not fit the method
            (QLoRA with FSDP or ZeRO-3) or the resolved batch size.
        InvalidRequestError: ``insufficient_memory``, the estimated memory of one training process
            exceeds ``resources.memory_mb`` (or ``TUNINGLAB_RANK_MEMORY_MB``); see `memory_preflight`.
        IdempotencyError: ``idempotency_key`` already created another job of this owner.
        TooManyRequestsError: ``too_many_queued_jobs``, the owner already has
            ``MAX_QUEUED_JOBS_PER_USER`` jobs waiting to start.
    """
    base_model = BaseModel.objects.filter(name=spec.model).first()
    if base_model is None:
        known = list(BaseModel.objects.values_list("name", flat=True)[:10])
        raise InvalidRequestError(
            f"Model {spec.model!r} is not a registered base model.",
            code="model_not_found",
            param="model",
            suggestion=f"Registered base models: {', '.join(known) or 'none (an operator registers them)'}.",
        )
    training = _usable_file(owner=owner, file_id=spec.training_file, param="training_file")
    validation = (
        _usable_file(owner=owner, file_id=spec.validation_file, param="validation_file")
        if spec.validation_file
        else None
    )
    resolved = resolve_hyperparameters(
        hyperparameters=spec.hyperparameters,
        tuning_method=spec.tuning_method,
        example_count=training.example_count,
        parameter_count=base_model.parameter_count,
        world_size=spec.distributed.world_size,
    )
    _check_distributed(
        spec=spec.distributed,
        method=spec.tuning_method,
        batch_size=resolved["batch_size"],
        hp_param=spec.hyperparameters_param,
        select=resolved.get("select", "last"),
        precision=resolved.get("precision", "fp32"),
    )
    # Before anything is written: a job that cannot fit its processes' memory is refused here.
    preflight = memory_preflight(spec=spec, base_model=base_model, resolved=resolved)
    check_run_limits(
        resolved=resolved,
        example_count=training.example_count,
        token_estimate=training.token_estimate,
        param=spec.hyperparameters_param,
    )
    queue = queue_for_resources(spec.resources)
    with transaction.atomic():
        _check_queued_quota(owner=owner)
        # Lock the files and re-check them: a concurrent delete either committed first (we
        # answer 404 here) or waits for our job to commit and then refuses with file_in_use.
        _lock_live_files(files=[training, validation])
        job = _insert_job(
            idempotency_key=idempotency_key,
            owner=owner,
            base_model=base_model,
            training_file=training,
            validation_file=validation,
            method=spec.tuning_method,
            hyperparameters=spec.hyperparameters,
            resolved_hyperparameters=resolved,
            lora_rank=spec.lora["rank"],
            lora_alpha=spec.lora["alpha"],
            lora_dropout=spec.lora["dropout"],
            target_modules=spec.lora["target_modules"],
            seed=spec.seed,
            suffix=spec.suffix,
            model_name=spec.model_name or default_model_name(suffix=spec.suffix, base_name=base_model.name),
            promote_to=spec.promote_to,
            metadata=spec.metadata,
            priority=spec.priority,
            resources=spec.resources,
            distributed=spec.distributed.to_dict() if spec.distributed.is_distributed else {},
            memory_estimate=preflight.estimate,
            queue=queue,
            max_attempts=settings.TUNINGLAB["MAX_ATTEMPTS"],
        )
        job_event_add(
            job_id=job.id,
            message=f"Job created: {spec.tuning_method} on {base_model.name}{_layout(spec.distributed)}; "
            "validating files.",
            data={"status": TuningJob.Status.VALIDATING_FILES, "hyperparameters": resolved, "queue": queue},
        )
        if preflight.warning:
            job_event_add(
                job_id=job.id,
                message=preflight.warning,
                level=JobEvent.Level.WARNING,
                data={"memory_estimate": preflight.estimate},
            )
        # Files were validated at upload (status 'processed' checked above), so move on at once.
        job = tuning_job_queue(job=job)
        # tuning_job_queue re-reads the row, which drops the loaded relations; the answer names the
        # owner and the base model, so put back the rows in hand instead of reading them again.
        job.owner, job.base_model = owner, base_model
        job_id, job_queue = job.id, job.queue
        transaction.on_commit(lambda: dispatch_job(job_id, job_queue))
    return job


def job_metrics_events_add(*, job_id: str, samples: list[tuple[str, dict[str, Any]]]) -> int:
    """Append metrics events ``(message, data)`` in one INSERT, in order; returns how many.

    The worker batches a fast run's metrics lines (one per logged step) and writes them together
    with the progress columns, instead of one statement and commit per step. ``seq`` numbers
    are taken now and increase along the batch, so the events sort after everything written
    before them, in the order the child printed them. Call it inside the attempt's fenced transaction.
    """
    base = time.time_ns()
    rows = [
        JobEvent(job_id=job_id, type=JobEvent.Type.METRICS, message=message, data=data, seq=base + i)
        for i, (message, data) in enumerate(samples)
    ]
    JobEvent.objects.bulk_create(rows)
    return len(rows)
