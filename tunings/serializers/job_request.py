"""A create-job request body → ``JobSpec``, checked field by field (the first problem is a 400 naming it).

Request body (OpenAI's fine-tuning shape plus our extras, see docs/api.md)::

    {"model", "training_file", "validation_file", "suffix", "seed", "metadata",
     "hyperparameters": {...}  |  "method": {"type": "supervised", "supervised": {"hyperparameters": {...}}},
     "tuning_method": "lora|qlora|full", "lora": {"rank", "alpha", "dropout", "target_modules"},
     "priority", "resources": {"gpus", "nproc", "launcher", "memory_mb"},
     "distributed": {"strategy", "zero_stage", "offload_optimizer", "offload_params",
                     "nproc_per_node", "nnodes", "rdzv_endpoint"}}

Only the shape is checked here: whether the files and the model exist is the create
service's question, and the hyperparameter rules live in ``tunings.hyperparameters``. The
``distributed`` spec is the engine's own ``DistributedSpec``; whether it fits the method and
the (resolved) batch size is checked by the create service once ``"auto"`` is resolved.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from lora_engine.distributed import MAX_NPROC_PER_NODE, DistributedSpec
from lora_engine.errors import ConfigError
from registry.naming import NAME_RE
from registry.services.aliases import alias_name_validate
from tuninglab.errors import InvalidRequestError
from tunings.hyperparameters import is_int, validate_hyperparameters, validate_lora
from tunings.models import TuningJob

SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}\Z")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
SEED_MAX = 2**31 - 1
MAX_PRIORITY = 100  # the API's range is [-MAX_PRIORITY, min(USER_MAX_PRIORITY, MAX_PRIORITY)]
MAX_GPUS = 64
# ``resources.launcher``: "auto" follows the ``distributed`` strategy; the others name the
# launcher the strategy must use (``DistributedSpec.launcher``).
LAUNCHERS = ("auto", "single", "torchrun", "deepspeed")
# A launcher named without a ``distributed`` spec picks the strategy (``resources`` is a shorthand).
LAUNCHER_STRATEGY = {"single": "none", "torchrun": "ddp", "deepspeed": "deepspeed"}
RESOURCE_FIELDS = ("gpus", "nproc", "launcher", "memory_mb")
# ``resources.memory_mb``: memory one training process may use (the memory preflight checks it).
MAX_MEMORY_MB = 16 * 1024 * 1024
INVALID_DISTRIBUTED = "invalid_distributed"
DISTRIBUTED_DOCS = "docs/distributed.md"
# What to change for each refused ``distributed`` field (the message says what is wrong).
DISTRIBUTED_SUGGESTIONS = {
    "strategy": "Use strategy 'ddp' (adapter training on cards that hold the model), 'fsdp' or 'deepspeed' "
    f"(shard the model over the processes), or 'none' for one process; {DISTRIBUTED_DOCS} compares them.",
    "zero_stage": "Set zero_stage 2 or 3 with strategy 'deepspeed'; drop it for the other strategies.",
    "offload_optimizer": "Offloading is DeepSpeed's: set strategy 'deepspeed', or drop offload_optimizer.",
    "offload_params": "Parameter offload needs strategy 'deepspeed' with zero_stage 3, or drop offload_params.",
    "nproc_per_node": f"Set nproc_per_node to an integer in 1..{MAX_NPROC_PER_NODE} (one process per GPU).",
    "nnodes": "Set nnodes to the number of machines (1 unless multi-node training is enabled).",
    "rdzv_endpoint": "Give the rendezvous as host:port, e.g. 'node0.cluster:29500', or drop it.",
}

KNOWN_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "model_name",
    "promote_to",
    "seed",
    "metadata",
    "integrations",
    "tuning_method",
    "lora",
    "priority",
    "resources",
    "distributed",
}


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
    model_name: str
    """Registered model the result becomes a version of; "" means: the suffix, else ``<base>-ft``."""
    metadata: dict[str, str]
    priority: int
    resources: dict[str, Any]
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    """The process layout: the ``distributed`` field, or what ``resources.nproc`` / ``launcher`` imply."""
    promote_to: str = ""
    """Alias (e.g. ``production``) the new version moves to when the job succeeds; "" keeps aliases as they are."""
    hyperparameters_param: str = "hyperparameters"
    """Where the request put its hyperparameters (or ``method.supervised.hyperparameters``): errors name it."""


def _bad(
    message: str, param: str | None, code: str = "invalid_value", suggestion: str | None = None
) -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param, suggestion=suggestion)


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


def _validate_priority(raw: Any) -> int:
    """Users may lower their own job's priority, and raise it only up to ``USER_MAX_PRIORITY``.

    Above that is the operators' call (admin, ``tuning_job_set_priority``): a self-set priority
    with no ceiling lets one user's jobs jump every other user's.
    """
    top = min(int(settings.TUNINGLAB["USER_MAX_PRIORITY"]), MAX_PRIORITY)
    if not is_int(raw) or not -MAX_PRIORITY <= raw <= top:
        raise _bad(
            f"priority must be an integer in [-{MAX_PRIORITY}, {top}] (higher runs first), got {raw!r}.",
            "priority",
            suggestion=f"Pass a priority of at most {top} (lower values let other jobs go first); "
            "to run a job sooner, ask an operator to raise its priority in the admin.",
        )
    return raw


def _validate_resources(raw: Any) -> dict[str, Any]:
    """``gpus`` picks the queue; ``nproc`` / ``launcher`` shape the process layout (see `_distributed_spec`);
    ``memory_mb`` is what one process may use (``tunings.services.preflight``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("resources must be an object {gpus, nproc, launcher, memory_mb}.", "resources", code="invalid_type")
    unknown = sorted(set(raw) - set(RESOURCE_FIELDS))
    if unknown:
        raise _bad(f"Unknown resource {unknown[0]!r}.", f"resources.{unknown[0]}", code="unknown_parameter")
    out: dict[str, Any] = {}
    if "gpus" in raw:
        if not is_int(raw["gpus"]) or not 0 <= raw["gpus"] <= MAX_GPUS:
            raise _bad(f"resources.gpus must be an integer in [0, {MAX_GPUS}].", "resources.gpus")
        out["gpus"] = raw["gpus"]
    if "nproc" in raw:
        nproc = raw["nproc"]
        if not is_int(nproc) or not 1 <= nproc <= MAX_NPROC_PER_NODE:
            raise _bad(
                f"resources.nproc must be an integer in [1, {MAX_NPROC_PER_NODE}] (processes per node), got {nproc!r}.",
                "resources.nproc",
                suggestion="Set nproc to the training processes per node (one per GPU), or omit it for one process.",
            )
        out["nproc"] = nproc
    if "launcher" in raw:
        launcher = raw["launcher"]
        if launcher not in LAUNCHERS:
            raise _bad(
                f"resources.launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}.",
                "resources.launcher",
                suggestion="Omit it ('auto'): the distributed strategy decides the launcher.",
            )
        out["launcher"] = launcher
    if "memory_mb" in raw:
        memory = raw["memory_mb"]
        if not is_int(memory) or not 1 <= memory <= MAX_MEMORY_MB:
            raise _bad(
                f"resources.memory_mb must be an integer in [1, {MAX_MEMORY_MB}] (MiB per training process), "
                f"got {memory!r}.",
                "resources.memory_mb",
                suggestion="Give the memory one training process (one GPU's memory, or one CPU process's share) "
                "may use, in MiB, or omit it to use the workers' default.",
            )
        out["memory_mb"] = memory
    return out


def distributed_error(exc: ConfigError) -> InvalidRequestError:
    """The engine's refusal of a ``distributed`` field as a 400 ``invalid_distributed`` naming it."""
    param = exc.param or "distributed"
    field = param.removeprefix("distributed.")
    return _bad(
        f"{exc.message.rstrip('.')}.",
        param,
        code=INVALID_DISTRIBUTED,
        suggestion=DISTRIBUTED_SUGGESTIONS.get(field, f"See {DISTRIBUTED_DOCS} for the distributed fields."),
    )


def _distributed_spec(raw: Any, resources: dict[str, Any]) -> DistributedSpec:
    """The job's ``DistributedSpec``: the ``distributed`` field, or what ``resources`` implies.

    ``resources`` is a shorthand kept from before distributed training: ``nproc`` N is N processes
    on one node (DDP unless a launcher or a spec says otherwise), ``launcher`` names the engine.
    Given together with ``distributed``, they must agree with it (a contradiction is a 400, not a
    silent choice of one of them).
    """
    nproc, launcher = resources.get("nproc"), resources.get("launcher", "auto")
    if raw is None:
        strategy = LAUNCHER_STRATEGY.get(launcher, "none")
        if strategy == "none" and (nproc or 1) > 1:
            if launcher == "single":
                raise _bad(
                    f"resources.launcher 'single' runs one process, but resources.nproc is {nproc}.",
                    "resources.launcher",
                    code=INVALID_DISTRIBUTED,
                    suggestion="Drop launcher (or set 'torchrun') to train with DDP on nproc processes, "
                    "or set nproc 1.",
                )
            strategy = "ddp"
        raw = {"strategy": strategy, "nproc_per_node": nproc or 1}
    if not isinstance(raw, dict):
        raise _bad(
            'distributed must be an object like {"strategy": "ddp", "nproc_per_node": 2}.',
            "distributed",
            code="invalid_type",
            suggestion=f"See {DISTRIBUTED_DOCS} for the fields and when to choose each strategy.",
        )
    try:
        spec = DistributedSpec.from_dict(raw)
    except ConfigError as exc:
        raise distributed_error(exc) from exc
    if nproc is not None and nproc != spec.nproc_per_node:
        raise _bad(
            f"resources.nproc {nproc} contradicts distributed.nproc_per_node {spec.nproc_per_node}.",
            "resources.nproc",
            code=INVALID_DISTRIBUTED,
            suggestion="Drop resources.nproc: distributed.nproc_per_node sets the processes per node.",
        )
    if launcher != "auto" and launcher != spec.launcher:
        raise _bad(
            f"resources.launcher {launcher!r} contradicts distributed.strategy {spec.strategy!r}, "
            f"which runs under {spec.launcher!r}.",
            "resources.launcher",
            code=INVALID_DISTRIBUTED,
            suggestion="Drop resources.launcher ('auto'): the strategy picks the launcher "
            "(ddp and fsdp: torchrun; deepspeed: deepspeed; none: single).",
        )
    if spec.nnodes > 1 and not settings.TUNINGLAB.get("MULTI_NODE", False):
        raise _bad(
            f"distributed.nnodes {spec.nnodes}: multi-node training is not enabled on this server.",
            "distributed.nnodes",
            code="unsupported_resource",
            suggestion=f"Train on one node (nnodes 1, up to {MAX_NPROC_PER_NODE} processes); an operator may "
            f"enable multi-node runs with TUNINGLAB_MULTI_NODE=true (see {DISTRIBUTED_DOCS}).",
        )
    return spec


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
    if hyperparameters.get("select") == "best" and not validation_file:
        # The best step is the one with the lowest validation loss: without validation data the
        # engine refuses the config, so say it here (400) rather than as a failed job.
        raise _bad(
            'select "best" needs a validation_file to pick the best step by.',
            f"{hp_param}.select",
            code="invalid_hyperparameter",
            suggestion='Pass a validation_file, or drop select (the default "last" keeps the final weights).',
        )
    lora = validate_lora(payload.get("lora"), tuning_method)

    seed = payload.get("seed")
    if seed is None:
        seed = secrets.randbelow(SEED_MAX)  # like OpenAI: a random seed, reported on the job
    elif not is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise _bad(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}.", "seed")

    suffix = payload.get("suffix")
    if suffix is None:
        suffix = ""
    elif not isinstance(suffix, str) or not SUFFIX_RE.fullmatch(suffix.lower()):
        raise _bad(
            "suffix must be 1..40 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter "
            "or digit.",
            "suffix",
            suggestion="e.g. 'support-bot-v2'.",
        )
    else:
        suffix = suffix.lower()

    model_name = payload.get("model_name")
    if model_name is None:
        model_name = ""
    elif not isinstance(model_name, str) or not NAME_RE.fullmatch(model_name):
        raise _bad(
            "model_name must be 1..64 characters: lowercase letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            "model_name",
            suggestion="e.g. 'support-bot'. Versions of one name (yours only) count up: v1, v2, ...",
        )

    promote_to = payload.get("promote_to")
    if promote_to is None or promote_to == "":
        promote_to = ""
    else:
        try:
            alias_name_validate(promote_to)
        except InvalidRequestError as exc:
            raise _bad(exc.message, "promote_to", code="invalid_alias", suggestion=exc.suggestion) from exc

    integrations = payload.get("integrations")
    if integrations not in (None, []):
        raise _bad("integrations are not supported yet; pass [] or omit it.", "integrations", code="unsupported")
    priority = _validate_priority(payload.get("priority", 0))
    resources = _validate_resources(payload.get("resources"))
    distributed = _distributed_spec(payload.get("distributed"), resources)

    return JobSpec(
        model=model,
        training_file=training_file,
        validation_file=validation_file or None,
        hyperparameters=hyperparameters,
        tuning_method=tuning_method,
        lora=lora,
        seed=seed,
        suffix=suffix,
        model_name=model_name,
        metadata=_validate_metadata(payload.get("metadata")),
        priority=priority,
        resources=resources,
        distributed=distributed,
        promote_to=promote_to,
        hyperparameters_param=hp_param,
    )
