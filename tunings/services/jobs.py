"""Job creation: validate the request, resolve ``"auto"`` hyperparameters, queue, dispatch after commit.

The state machine itself lives in ``tunings.services.state`` (lead-owned); this module only
*creates* jobs and moves them ``validating_files → queued`` through it.

Request body (OpenAI's fine-tuning shape plus our extras, see docs/api.md)::

    {"model", "training_file", "validation_file", "suffix", "seed", "metadata",
     "hyperparameters": {...}  |  "method": {"type": "supervised", "supervised": {"hyperparameters": {...}}},
     "tuning_method": "lora|qlora|full", "lora": {"rank", "alpha", "dropout", "target_modules"},
     "priority", "resources": {"gpus", "nproc", "launcher"}}
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from registry.models import BaseModel
from tuninglab.errors import IdempotencyError, InvalidRequestError, NotFoundError
from tunings.models import TrainingFile, TuningJob
from tunings.services.state import job_event_add, tuning_job_queue

logger = logging.getLogger(__name__)

AUTO = "auto"
SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
ALL_LINEAR = "all-linear"
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
SEED_MAX = 2**31 - 1
# Base learning rates that learning_rate_multiplier scales (LoRA/QLoRA adapters vs full weights).
BASE_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
LAUNCHERS = ("auto", "single", "torchrun", "deepspeed")
SCHEDULERS = ("cosine", "linear", "constant")

# OpenAI's epoch heuristic: aim for 100..25,000 example passes in total, 3 epochs by default.
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25


@dataclass(frozen=True)
class _Number:
    """One numeric hyperparameter: type, bounds, whether ``"auto"`` is allowed, default."""

    kind: type
    low: float
    high: float
    low_inclusive: bool = True
    auto: bool = False
    default: Any = None

    def describe(self) -> str:
        left = "[" if self.low_inclusive else "("
        what = "an integer" if self.kind is int else "a number"
        rng = f"{what} in {left}{self.low:g}, {self.high:g}]"
        return f'{rng} or "auto"' if self.auto else rng


# The accepted hyperparameters. The first three are OpenAI's; the rest are ours (engine knobs).
HYPERPARAMETERS: dict[str, _Number] = {
    "n_epochs": _Number(int, 1, 50, auto=True, default=AUTO),
    "batch_size": _Number(int, 1, 256, auto=True, default=AUTO),
    "learning_rate_multiplier": _Number(float, 0, 10, low_inclusive=False, auto=True, default=AUTO),
    # Engine knobs: omitted unless given, so the worker's / engine's defaults apply.
    "warmup_ratio": _Number(float, 0, 0.99),
    "max_seq_len": _Number(int, 8, 32768),
    "grad_accum_steps": _Number(int, 1, 1024),
    "max_steps": _Number(int, 1, 10_000_000),
    "checkpoint_every": _Number(int, 1, 10_000_000),
    "eval_every": _Number(int, 1, 10_000_000),
    # Test hook passed through to the engine: seconds to sleep after each optimizer step.
    "step_delay_s": _Number(float, 0, 60),
}
STRING_HYPERPARAMETERS = {"lr_scheduler": SCHEDULERS, "precision": ("fp32", "bf16", "fp16")}
BOOL_HYPERPARAMETERS = ("gradient_checkpointing", "packing")


@dataclass(frozen=True)
class JobSpec:
    """A validated create request (files and model not yet looked up)."""

    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    tuning_method: str
    lora: dict[str, Any]
    seed: int
    suffix: str
    metadata: dict[str, str]
    priority: int
    resources: dict[str, Any]


def _bad(
    message: str, param: str | None, code: str = "invalid_value", suggestion: str | None = None
) -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param, suggestion=suggestion)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(name: str, value: Any, spec: _Number, param: str) -> Any:
    if value == AUTO and spec.auto:
        return AUTO
    ok_type = _is_int(value) if spec.kind is int else _is_number(value)
    if spec.kind is int and isinstance(value, float) and value.is_integer():
        value, ok_type = int(value), True  # 3.0 from a JSON client is 3
    if not ok_type:
        raise _bad(f"{name} must be {spec.describe()}, got {value!r}.", param, code="invalid_hyperparameter")
    above_low = value >= spec.low if spec.low_inclusive else value > spec.low
    if not (above_low and value <= spec.high):
        raise _bad(f"{name} must be {spec.describe()}, got {value!r}.", param, code="invalid_hyperparameter")
    return spec.kind(value)


def validate_hyperparameters(raw: Any, *, param: str = "hyperparameters") -> dict[str, Any]:
    """Check types and ranges. OpenAI's three default to ``"auto"`` (resolved later); our engine
    knobs appear only when given, so the engine's defaults apply otherwise.

    Raises:
        InvalidRequestError: 400 ``invalid_hyperparameter`` / ``unknown_parameter`` naming the field.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _bad("hyperparameters must be an object.", param, code="invalid_type")
    known = set(HYPERPARAMETERS) | set(STRING_HYPERPARAMETERS) | set(BOOL_HYPERPARAMETERS)
    for name in raw:
        if name not in known:
            raise _bad(
                f"Unknown hyperparameter {name!r}.",
                f"{param}.{name}",
                code="unknown_parameter",
                suggestion=f"Known hyperparameters: {', '.join(sorted(known))}.",
            )
    out: dict[str, Any] = {}
    for name, spec in HYPERPARAMETERS.items():
        value = raw.get(name)
        if value is not None:
            out[name] = _check_number(name, value, spec, f"{param}.{name}")
        elif spec.default is not None:
            out[name] = spec.default
    for name, choices in STRING_HYPERPARAMETERS.items():
        if raw.get(name) is None:
            continue
        if raw[name] not in choices:
            raise _bad(f"{name} must be one of {', '.join(choices)}.", f"{param}.{name}", code="invalid_hyperparameter")
        out[name] = raw[name]
    for name in BOOL_HYPERPARAMETERS:
        if raw.get(name) is None:
            continue
        if not isinstance(raw[name], bool):
            raise _bad(f"{name} must be true or false.", f"{param}.{name}", code="invalid_hyperparameter")
        out[name] = raw[name]
    if "max_steps" in out and out["n_epochs"] != AUTO:
        raise _bad(
            "Set either n_epochs or max_steps, not both.",
            f"{param}.max_steps",
            code="invalid_hyperparameter",
            suggestion="Drop n_epochs (or set it to 'auto') when you cap the run with max_steps.",
        )
    return out


def _validate_lora(raw: Any, tuning_method: str) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _bad("lora must be an object {rank, alpha, dropout, target_modules}.", "lora", code="invalid_type")
    if raw and tuning_method == TuningJob.Method.FULL:
        raise _bad(
            "lora settings do not apply to tuning_method 'full'.",
            "lora",
            suggestion="Drop 'lora' or use tuning_method 'lora' / 'qlora'.",
        )
    unknown = sorted(set(raw) - {"rank", "alpha", "dropout", "target_modules"})
    if unknown:
        raise _bad(f"Unknown lora setting {unknown[0]!r}.", f"lora.{unknown[0]}", code="unknown_parameter")
    rank = raw.get("rank", 8)
    if not _is_int(rank) or not 1 <= rank <= 256:
        raise _bad(
            f"lora.rank must be an integer in [1, 256], got {rank!r}.", "lora.rank", code="invalid_hyperparameter"
        )
    alpha = raw.get("alpha", 2 * rank)
    if not _is_number(alpha) or alpha <= 0:
        raise _bad(f"lora.alpha must be a number > 0, got {alpha!r}.", "lora.alpha", code="invalid_hyperparameter")
    dropout = raw.get("dropout", 0.05)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise _bad(
            f"lora.dropout must be a number in [0, 1), got {dropout!r}.", "lora.dropout", code="invalid_hyperparameter"
        )
    modules = raw.get("target_modules", DEFAULT_TARGET_MODULES)
    if modules == ALL_LINEAR or modules == [ALL_LINEAR]:
        modules = [ALL_LINEAR]
    elif (
        not isinstance(modules, list)
        or not 1 <= len(modules) <= 64
        or not all(isinstance(m, str) and MODULE_NAME_RE.match(m) for m in modules)
    ):
        raise _bad(
            "lora.target_modules must be 'all-linear' or a list of 1..64 module names (letters, digits, _ and .).",
            "lora.target_modules",
            code="invalid_hyperparameter",
            suggestion='e.g. ["q_proj", "v_proj"] or "all-linear".',
        )
    return {
        "rank": rank,
        "alpha": float(alpha),
        "dropout": float(dropout),
        "target_modules": list(dict.fromkeys(modules)),
    }


def _validate_metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("metadata must be an object of string keys and string values.", "metadata", code="invalid_type")
    if len(raw) > MAX_METADATA_PAIRS:
        raise _bad(f"metadata holds at most {MAX_METADATA_PAIRS} pairs, got {len(raw)}.", "metadata")
    for key, value in raw.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            raise _bad(f"metadata keys are strings of 1..{MAX_METADATA_KEY} characters.", f"metadata.{key}")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise _bad(f"metadata values are strings of at most {MAX_METADATA_VALUE} characters.", f"metadata.{key}")
    return dict(raw)


def _validate_resources(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("resources must be an object {gpus, nproc, launcher}.", "resources", code="invalid_type")
    unknown = sorted(set(raw) - {"gpus", "nproc", "launcher"})
    if unknown:
        raise _bad(f"Unknown resource {unknown[0]!r}.", f"resources.{unknown[0]}", code="unknown_parameter")
    out: dict[str, Any] = {}
    if "gpus" in raw:
        if not _is_int(raw["gpus"]) or not 0 <= raw["gpus"] <= 64:
            raise _bad("resources.gpus must be an integer in [0, 64].", "resources.gpus")
        out["gpus"] = raw["gpus"]
    if "nproc" in raw:
        if not _is_int(raw["nproc"]) or not 1 <= raw["nproc"] <= 64:
            raise _bad(
                "resources.nproc must be an integer in [1, 64] (processes for distributed runs).", "resources.nproc"
            )
        out["nproc"] = raw["nproc"]
    if "launcher" in raw:
        if raw["launcher"] not in LAUNCHERS:
            raise _bad(f"resources.launcher must be one of {', '.join(LAUNCHERS)}.", "resources.launcher")
        out["launcher"] = raw["launcher"]
    return out


def _required_str(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if value in (None, ""):
        raise _bad(f"{name} is required.", name, code="missing_required_parameter")
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string.", name, code="invalid_type")
    return value


def _pick_hyperparameters(payload: dict[str, Any]) -> tuple[Any, str]:
    """OpenAI accepts top-level ``hyperparameters`` (legacy) or ``method.supervised.hyperparameters``."""
    method = payload.get("method")
    if method is None:
        return payload.get("hyperparameters"), "hyperparameters"
    if not isinstance(method, dict):
        raise _bad('method must be an object like {"type": "supervised", "supervised": {...}}.', "method")
    kind = method.get("type", "supervised")
    if kind != "supervised":
        raise _bad(
            f"method.type {kind!r} is not supported; only 'supervised' is.",
            "method.type",
            code="unsupported_method",
            suggestion="Choose LoRA/QLoRA/full training with tuning_method; method.type stays 'supervised'.",
        )
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict):
        raise _bad("method.supervised must be an object.", "method.supervised", code="invalid_type")
    nested = supervised.get("hyperparameters")
    if nested is not None and payload.get("hyperparameters") is not None:
        raise _bad(
            "Pass hyperparameters either at the top level or in method.supervised, not both.",
            "hyperparameters",
        )
    if nested is None:
        return payload.get("hyperparameters"), "hyperparameters"
    return nested, "method.supervised.hyperparameters"


KNOWN_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "metadata",
    "integrations",
    "tuning_method",
    "lora",
    "priority",
    "resources",
}


def job_spec_from_payload(payload: Any) -> JobSpec:
    """Validate a create request body field by field; the first problem is a 400 naming its field."""
    if not isinstance(payload, dict):
        raise _bad("The request body must be a JSON object.", None, code="invalid_body")
    unknown = sorted(set(payload) - KNOWN_FIELDS)
    if unknown:
        raise _bad(
            f"Unknown parameter {unknown[0]!r}.",
            unknown[0],
            code="unknown_parameter",
            suggestion=f"Known parameters: {', '.join(sorted(KNOWN_FIELDS))}.",
        )
    model = _required_str(payload, "model")
    training_file = _required_str(payload, "training_file")
    validation_file = payload.get("validation_file")
    if validation_file is not None and not isinstance(validation_file, str):
        raise _bad("validation_file must be a file id string.", "validation_file", code="invalid_type")

    tuning_method = payload.get("tuning_method", TuningJob.Method.LORA)
    if tuning_method not in TuningJob.Method.values:
        raise _bad(
            f"tuning_method must be one of {', '.join(TuningJob.Method.values)}, got {tuning_method!r}.",
            "tuning_method",
        )
    raw_hp, hp_param = _pick_hyperparameters(payload)
    hyperparameters = validate_hyperparameters(raw_hp, param=hp_param)
    lora = _validate_lora(payload.get("lora"), tuning_method)

    seed = payload.get("seed")
    if seed is None:
        seed = secrets.randbelow(SEED_MAX)  # like OpenAI: a random seed, reported on the job
    elif not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise _bad(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}.", "seed")

    suffix = payload.get("suffix")
    if suffix is None:
        suffix = ""
    elif not isinstance(suffix, str) or not SUFFIX_RE.match(suffix.lower()):
        raise _bad(
            "suffix must be 1..40 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter "
            "or digit.",
            "suffix",
            suggestion="e.g. 'support-bot-v2'.",
        )
    else:
        suffix = suffix.lower()

    integrations = payload.get("integrations")
    if integrations not in (None, []):
        raise _bad("integrations are not supported yet; pass [] or omit it.", "integrations", code="unsupported")

    priority = payload.get("priority", 0)
    if not _is_int(priority) or not -100 <= priority <= 100:
        raise _bad(f"priority must be an integer in [-100, 100] (higher runs first), got {priority!r}.", "priority")

    return JobSpec(
        model=model,
        training_file=training_file,
        validation_file=validation_file or None,
        hyperparameters=hyperparameters,
        tuning_method=tuning_method,
        lora=lora,
        seed=seed,
        suffix=suffix,
        metadata=_validate_metadata(payload.get("metadata")),
        priority=priority,
        resources=_validate_resources(payload.get("resources")),
    )


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


def resolve_hyperparameters(
    *, hyperparameters: dict[str, Any], tuning_method: str, example_count: int
) -> dict[str, Any]:
    """Replace every ``"auto"`` by a concrete value from the dataset size; add ``learning_rate``.

    Resolved at create time: files are validated at upload, so their example count is known.

    - n_epochs: None when ``max_steps`` is set; else 3, raised so the run sees ≥100 examples,
      lowered so it sees ≤25,000 (OpenAI's rule).
    - batch_size: ~0.2 % of the examples rounded to a power of two, within 1..32.
    - learning_rate_multiplier: 1.0, times the base rate of the method (2e-4 LoRA/QLoRA, 2e-5 full).
    """
    n = max(1, example_count)
    out = dict(hyperparameters)
    if "max_steps" in out:
        out["n_epochs"] = None  # the run is bounded by steps, not epochs (the engine takes one of them)
    elif out["n_epochs"] == AUTO:
        epochs = DEFAULT_EPOCHS
        if n * epochs < MIN_TARGET_EXAMPLES:
            epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n))
        elif n * epochs > MAX_TARGET_EXAMPLES:
            epochs = max(1, MAX_TARGET_EXAMPLES // n)
        out["n_epochs"] = epochs
    if out["batch_size"] == AUTO:
        target = max(1.0, n * 0.002)
        out["batch_size"] = int(min(32, max(1, 2 ** round(math.log2(target)))))
    if out["learning_rate_multiplier"] == AUTO:
        out["learning_rate_multiplier"] = 1.0
    out["learning_rate"] = BASE_LEARNING_RATE[tuning_method] * out["learning_rate_multiplier"]
    return out


def queue_for_resources(resources: dict[str, Any]) -> str:
    """Celery queue by resources: any GPU → ``gpu``, else ``cpu``."""
    return "gpu" if int(resources.get("gpus") or 0) > 0 else "cpu"


def _owner_slug(owner: Any) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", str(getattr(owner, "username", owner)).lower()).strip("-")
    return slug or f"user-{owner.pk}"


def fine_tuned_model_name(job: TuningJob) -> str:
    """The public name of a job's result, OpenAI style: ``ft:<base>:<owner>:<suffix>:<job id>``.

    The worker calls this when the job succeeds. No suffix gives ``ft:<base>:<owner>::<job id>``.
    """
    return f"ft:{job.base_model.name}:{_owner_slug(job.owner)}:{job.suffix}:{job.id}"


def dispatch_job(job_id: str, queue: str) -> None:
    """Send the job to a worker. Runs after commit, so a worker never sees an uncommitted row.

    The import is late: ``workers.dispatch`` is optional at import time of this module. If it
    is missing (or the broker is down) the job stays ``queued`` in the DB — the row is the
    truth — and we log loudly instead of failing the already-committed request.
    """
    try:
        from workers.dispatch import dispatch_tuning_job
    except ImportError:
        logger.error("workers.dispatch is not available; job %s stays queued until a worker picks it up", job_id)
        return
    try:
        dispatch_tuning_job(job_id, queue)
    except Exception:
        logger.exception("dispatching job %s to queue %s failed; it stays queued", job_id, queue)


def tuning_job_create(*, owner: Any, spec: JobSpec, idempotency_key: str | None = None) -> TuningJob:
    """Create a job from a validated spec: checks files and model, resolves ``"auto"``, queues it.

    One transaction: the job row, its events and the move to ``queued`` commit together; the
    task is dispatched only after that commit (``transaction.on_commit``).

    Raises:
        NotFoundError: a file that does not exist or belongs to someone else (param names the field).
        InvalidRequestError: unknown base model, unvalidated file, ...
        IdempotencyError: ``idempotency_key`` already created another job of this owner.
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
        hyperparameters=spec.hyperparameters, tuning_method=spec.tuning_method, example_count=training.example_count
    )
    queue = queue_for_resources(spec.resources)
    with transaction.atomic():
        # Lock the files and re-check them: a concurrent delete either committed first (we
        # answer 404 here) or waits for our job to commit and then refuses with file_in_use.
        _lock_live_files(files=[training, validation])
        try:
            # Savepoint: on PostgreSQL a failed INSERT poisons the transaction unless rolled back.
            with transaction.atomic():
                job = TuningJob.objects.create(
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
                    metadata=spec.metadata,
                    idempotency_key=idempotency_key,
                    priority=spec.priority,
                    resources=spec.resources,
                    queue=queue,
                    max_attempts=settings.TUNINGLAB["MAX_ATTEMPTS"],
                )
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
        job_event_add(
            job_id=job.id,
            message=f"Job created: {spec.tuning_method} on {base_model.name}; validating files.",
            data={"status": TuningJob.Status.VALIDATING_FILES, "hyperparameters": resolved, "queue": queue},
        )
        # Files were validated at upload (status 'processed' checked above), so move on at once.
        job = tuning_job_queue(job=job)
        job_id, job_queue = job.id, job.queue
        transaction.on_commit(lambda: dispatch_job(job_id, job_queue))
    return job
