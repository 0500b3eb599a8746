"""Every training knob a job can set, in one table, and the rules that turn it into a run.

* ``HYPERPARAMETERS``: the accepted hyperparameters with their type, bounds or choices,
  whether ``"auto"`` is allowed, and the ``TrainConfig`` field each one sets.
* ``validate_hyperparameters`` / ``validate_lora``: a request's values, checked (400s).
* ``check_run_limits``: the operator's quotas on a resolved run (steps, checkpoints, tokens).
* ``resolve_hyperparameters``: ``"auto"`` → numbers from the dataset size, at create time.
* ``train_config_values``: a job row's stored values → ``TrainConfig`` field values (no paths;
  ``workers.job_config`` adds those).

Engine choices and defaults (methods, schedulers, precisions, the LoRA shape) come from the
torch-free ``lora_engine.config``, so the API cannot accept a value the engine refuses.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from lora_engine.config import PRECISIONS, SCHEDULERS, SELECTS, TrainConfig
from tuninglab.errors import InvalidRequestError
from tunings.models import TuningJob

AUTO = "auto"

# Base learning rates that learning_rate_multiplier scales: adapters train at 10x the rate
# that is safe for updating every weight of the model.
BASE_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}

# "auto" (see resolve_hyperparameters and docs/api.md). Epochs: 3 by default, as OpenAI's rule,
# raised on small data until the run makes MIN_AUTO_STEPS optimizer steps (Adam with a
# schedule needs steps, not example passes, to move the adapter), lowered so the run sees
# at most MAX_TARGET_EXAMPLES examples.
DEFAULT_EPOCHS = 3
MIN_AUTO_STEPS = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
# Batch size: about AUTO_STEPS_PER_EPOCH optimizer steps per epoch, a power of two in 1..32.
AUTO_STEPS_PER_EPOCH = 8
MAX_AUTO_BATCH_SIZE = 32
# Learning rate by model size: the best rate falls as models grow. With Adam, a hidden weight
# matrix's best rate scales as 1/width (muP, Yang et al. 2022, "Tensor Programs V"); across
# the Llama family parameters grow about as width^3, so: rate ∝ parameters^(-1/3). The base
# rates above are the usual ones for a 7B model (multiplier 1.0 there); the 0.56M-parameter
# test model gets 23.2x (4.6e-3: 11/12 held-out identity questions after the demo's run,
# where 12x gave 9/12), a 70B one 0.46x.
# ("LoRA Without Regret", Thinking Machines 2025, fits a similar slope, hidden_size^-0.78.)
REFERENCE_PARAMETERS = 7e9
LR_SIZE_EXPONENT = 1 / 3
MIN_AUTO_MULTIPLIER = 0.1
# The multiplier's upper bound (requests and "auto" alike): 50 x 2e-4 = 1e-2, a rate only
# million-parameter models take (the tiny test model's auto multiplier is 23.2).
MAX_LEARNING_RATE_MULTIPLIER = 50.0

# Periodic checkpoints make a lost worker cost at most this many steps (resume). The engine's
# own default (0, no periodic checkpoints) suits a script, not a worker that can be killed.
DEFAULT_CHECKPOINT_EVERY = 50
# About this many metrics lines per run: every step up to 1,000 steps, every Nth beyond, so a
# long run's loss curve keeps its shape without a metrics event (and its write) per step.
METRICS_POINTS_PER_RUN = 1000
# Hyperparameters only an operator may let through the API (TUNINGLAB_ALLOW_TEST_HOOKS).
TEST_HOOKS = ("step_delay_s",)
LIMIT_EXCEEDED = "limit_exceeded"
# QLoRA quantizes the frozen base to 4-bit NF4 (the QLoRA paper's setting).
QLORA_QUANT_BITS = 4

_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
DEFAULT_LORA_RANK: int = _ENGINE_DEFAULTS["rank"]
DEFAULT_LORA_DROPOUT: float = _ENGINE_DEFAULTS["dropout"]
DEFAULT_TARGET_MODULES: list[str] = list(_ENGINE_DEFAULTS["target_modules"])
MAX_LORA_RANK = 256
MAX_TARGET_MODULES = 64
ALL_LINEAR = "all-linear"
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}\Z")
LORA_FIELDS = ("rank", "alpha", "dropout", "target_modules")


@dataclass(frozen=True)
class Hyperparameter:
    """One accepted hyperparameter: JSON type, bounds or choices, and the engine field it sets."""

    kind: type
    """``int``, ``float``, ``str`` (one of ``choices``) or ``bool``."""
    low: float = 0
    high: float = 0
    low_inclusive: bool = True
    choices: tuple[str, ...] = ()
    auto: bool = False
    """``"auto"`` is allowed and is the default; ``resolve_hyperparameters`` replaces it."""
    engine_field: str | None = None
    """The ``TrainConfig`` field it sets, when that is not spelled like the hyperparameter."""

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"one of {', '.join(self.choices)}"
        left = "[" if self.low_inclusive else "("
        what = "an integer" if self.kind is int else "a number"
        rng = f"{what} in {left}{self.low:g}, {self.high:g}]"
        return f'{rng} or "auto"' if self.auto else rng

    def clean(self, name: str, value: Any, param: str) -> Any:
        """``value`` in its stored type, or a 400 ``invalid_hyperparameter`` naming ``param``."""
        if value == AUTO and self.auto:
            return AUTO
        if self.kind is bool or self.kind is str:
            ok = isinstance(value, bool) if self.kind is bool else value in self.choices
            if not ok:
                raise _invalid(f"{name} must be {self.describe()}.", param)
            return value
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 3.0 from a JSON client is 3
        ok_type = is_int(value) if self.kind is int else _is_number(value)
        above_low = ok_type and (value >= self.low if self.low_inclusive else value > self.low)
        if not (above_low and value <= self.high):
            raise _invalid(f"{name} must be {self.describe()}, got {value!r}.", param)
        return self.kind(value)


# The accepted hyperparameters. The first three are OpenAI's (default "auto"); the rest are
# engine knobs, stored only when given so the engine's (or DEFAULT_CHECKPOINT_EVERY) applies.
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "n_epochs": Hyperparameter(int, 1, 50, auto=True, engine_field="num_epochs"),
    "batch_size": Hyperparameter(int, 1, 256, auto=True),
    # Sets no field itself: it scales the method's BASE_LEARNING_RATE into learning_rate.
    "learning_rate_multiplier": Hyperparameter(float, 0, MAX_LEARNING_RATE_MULTIPLIER, low_inclusive=False, auto=True),
    "warmup_ratio": Hyperparameter(float, 0, 0.99),
    "max_seq_len": Hyperparameter(int, 8, 32768),
    "grad_accum_steps": Hyperparameter(int, 1, 1024),
    "max_steps": Hyperparameter(int, 1, 10_000_000),
    "checkpoint_every": Hyperparameter(int, 1, 10_000_000),
    "eval_every": Hyperparameter(int, 1, 10_000_000),
    # Test hook passed through to the engine: seconds to sleep after each optimizer step. Refused
    # unless the operator allows test hooks (a sleeping job holds a worker and its lease for nothing).
    "step_delay_s": Hyperparameter(float, 0, 60),
    "lr_scheduler": Hyperparameter(str, choices=SCHEDULERS),
    "precision": Hyperparameter(str, choices=PRECISIONS),
    "gradient_checkpointing": Hyperparameter(bool),
    "packing": Hyperparameter(bool),
    # "best" registers the evaluated step with the lowest validation loss instead of the last one.
    "select": Hyperparameter(str, choices=SELECTS),
}
# OpenAI's three (the ones that take "auto"): the job object shows them under `hyperparameters`.
OPENAI_HYPERPARAMETERS = tuple(name for name, hp in HYPERPARAMETERS.items() if hp.auto)
# Written by resolve_hyperparameters next to the catalogue's values; passed to the engine as is.
RESOLVED_ONLY = ("learning_rate",)


def is_int(value: Any) -> bool:
    """A JSON integer: ``True`` is not 1 here."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _invalid(
    message: str, param: str, code: str = "invalid_hyperparameter", suggestion: str | None = None
) -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param, suggestion=suggestion)


def validate_hyperparameters(raw: Any, *, param: str = "hyperparameters") -> dict[str, Any]:
    """Check types and ranges. OpenAI's three default to ``"auto"`` (resolved later); engine
    knobs appear only when given, so the engine's defaults apply otherwise.

    Raises:
        InvalidRequestError: 400 ``invalid_hyperparameter`` / ``unknown_parameter`` naming the field;
            ``test_hooks_disabled`` for a test hook the operator did not allow; ``limit_exceeded``
            for ``max_steps`` above ``MAX_STEPS``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _invalid("hyperparameters must be an object.", param, code="invalid_type")
    for name in raw:
        if name not in HYPERPARAMETERS:
            raise _invalid(
                f"Unknown hyperparameter {name!r}.",
                f"{param}.{name}",
                code="unknown_parameter",
                suggestion=f"Known hyperparameters: {', '.join(sorted(HYPERPARAMETERS))}.",
            )
    out: dict[str, Any] = {}
    for name, spec in HYPERPARAMETERS.items():
        value = raw.get(name)
        if value is not None:
            out[name] = spec.clean(name, value, f"{param}.{name}")
        elif spec.auto:
            out[name] = AUTO
    if "max_steps" in out and out["n_epochs"] != AUTO:
        raise _invalid(
            "Set either n_epochs or max_steps, not both.",
            f"{param}.max_steps",
            suggestion="Drop n_epochs (or set it to 'auto') when you cap the run with max_steps.",
        )
    limits = settings.TUNINGLAB
    for name in TEST_HOOKS:
        if name in out and not limits["ALLOW_TEST_HOOKS"]:
            raise _invalid(
                f"{name} is a test hook and is disabled on this server.",
                f"{param}.{name}",
                code="test_hooks_disabled",
                suggestion=f"Drop {name}; an operator may allow test hooks with TUNINGLAB_ALLOW_TEST_HOOKS=true.",
            )
    max_steps = int(limits["MAX_STEPS"])
    if out.get("max_steps", 0) > max_steps:
        raise _over_limit(
            f"max_steps {out['max_steps']} is above this server's limit of {max_steps} steps per job.",
            f"{param}.max_steps",
            f"Set max_steps to at most {max_steps} (TUNINGLAB_MAX_STEPS, set by the operator).",
        )
    return out


def _over_limit(message: str, param: str, suggestion: str) -> InvalidRequestError:
    return _invalid(message, param, code=LIMIT_EXCEEDED, suggestion=suggestion)


def estimated_total_steps(hp: dict[str, Any], example_count: int) -> int | None:
    """Optimizer steps of a run with these resolved values; None when the values do not say.

    As the engine counts them (``max_steps``, else epochs x ceil(ceil(N / batch) / accum)). An
    upper bound: packing and a validation split only make fewer.
    """
    if is_int(hp.get("max_steps")):
        return int(hp["max_steps"])
    epochs, batch = hp.get("n_epochs"), hp.get("batch_size")
    if not (is_int(epochs) and is_int(batch)) or example_count <= 0 or batch <= 0:
        return None
    accum = hp.get("grad_accum_steps") or 1
    return int(epochs) * math.ceil(math.ceil(example_count / batch) / accum)


def check_run_limits(
    *, resolved: dict[str, Any], example_count: int, token_estimate: int, param: str = "hyperparameters"
) -> None:
    """Refuse a resolved run past the operator's quotas: steps, checkpoints, trained tokens.

    At create time, once ``"auto"`` is resolved and the dataset's size is known: an epoch-bounded
    run's length depends on both. The error names the hyperparameter to change.

    Raises:
        InvalidRequestError: 400 ``limit_exceeded`` naming the field and the limit.
    """
    limits = settings.TUNINGLAB
    steps = estimated_total_steps(resolved, example_count)
    if steps is None:
        return
    by_steps = "max_steps" in resolved and resolved["max_steps"] is not None
    length_param = f"{param}.max_steps" if by_steps else f"{param}.n_epochs"
    max_steps = int(limits["MAX_STEPS"])
    if steps > max_steps:
        raise _over_limit(
            f"This run would make {steps} optimizer steps; this server allows at most {max_steps} per job.",
            length_param,
            f"Lower n_epochs, raise batch_size, or set max_steps of at most {max_steps} "
            "(TUNINGLAB_MAX_STEPS, set by the operator).",
        )
    every = resolved.get("checkpoint_every")
    max_checkpoints = int(limits["MAX_CHECKPOINTS_PER_RUN"])
    if is_int(every) and steps // every > max_checkpoints:
        least = math.ceil(steps / max_checkpoints)
        raise _over_limit(
            f"checkpoint_every {every} would write {steps // every} checkpoints over {steps} steps; "
            f"this server allows at most {max_checkpoints} per run.",
            f"{param}.checkpoint_every",
            f"Set checkpoint_every to at least {least} (TUNINGLAB_MAX_CHECKPOINTS_PER_RUN is {max_checkpoints}).",
        )
    max_tokens = int(limits["MAX_TRAINED_TOKENS"])
    if example_count > 0 and token_estimate > 0:
        batch = resolved.get("batch_size") or 1
        examples_seen = steps * batch * (resolved.get("grad_accum_steps") or 1)
        if not by_steps:
            examples_seen = min(examples_seen, example_count * int(resolved.get("n_epochs") or 1))
        tokens = token_estimate * examples_seen // example_count
        if tokens > max_tokens:
            raise _over_limit(
                f"This run would train on about {tokens:,} tokens; this server allows at most {max_tokens:,} per job.",
                length_param,
                "Train fewer epochs or steps, or on a smaller dataset "
                f"(TUNINGLAB_MAX_TRAINED_TOKENS is {max_tokens:,}, set by the operator).",
            )


def validate_lora(raw: Any, tuning_method: str) -> dict[str, Any]:
    """The LoRA shape ``{rank, alpha, dropout, target_modules}`` with defaults filled in.

    ``alpha`` defaults to ``2 * rank``; the rest to the engine's defaults.

    Raises:
        InvalidRequestError: 400 naming the ``lora.*`` field.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _invalid("lora must be an object {rank, alpha, dropout, target_modules}.", "lora", code="invalid_type")
    if raw and tuning_method == TuningJob.Method.FULL:
        raise _invalid(
            "lora settings do not apply to tuning_method 'full'.",
            "lora",
            code="invalid_value",
            suggestion="Drop 'lora' or use tuning_method 'lora' / 'qlora'.",
        )
    unknown = sorted(set(raw) - set(LORA_FIELDS))
    if unknown:
        raise _invalid(f"Unknown lora setting {unknown[0]!r}.", f"lora.{unknown[0]}", code="unknown_parameter")
    rank = raw.get("rank", DEFAULT_LORA_RANK)
    if not is_int(rank) or not 1 <= rank <= MAX_LORA_RANK:
        raise _invalid(f"lora.rank must be an integer in [1, {MAX_LORA_RANK}], got {rank!r}.", "lora.rank")
    alpha = raw.get("alpha", 2 * rank)
    if not _is_number(alpha) or alpha <= 0:
        raise _invalid(f"lora.alpha must be a number > 0, got {alpha!r}.", "lora.alpha")
    dropout = raw.get("dropout", DEFAULT_LORA_DROPOUT)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise _invalid(f"lora.dropout must be a number in [0, 1), got {dropout!r}.", "lora.dropout")
    modules = raw.get("target_modules", DEFAULT_TARGET_MODULES)
    if modules == ALL_LINEAR or modules == [ALL_LINEAR]:
        modules = [ALL_LINEAR]
    elif (
        not isinstance(modules, list)
        or not 1 <= len(modules) <= MAX_TARGET_MODULES
        or not all(isinstance(m, str) and MODULE_NAME_RE.fullmatch(m) for m in modules)
    ):
        raise _invalid(
            f"lora.target_modules must be 'all-linear' or a list of 1..{MAX_TARGET_MODULES} module names "
            "(letters, digits, _ and .).",
            "lora.target_modules",
            suggestion='e.g. ["q_proj", "v_proj"] or "all-linear".',
        )
    return {
        "rank": rank,
        "alpha": float(alpha),
        "dropout": float(dropout),
        "target_modules": list(dict.fromkeys(modules)),
    }


def learning_rate(method: str, multiplier: float | str | None) -> float:
    """Peak learning rate: the method's base rate times the multiplier (``"auto"`` or unset is 1.0)."""
    factor = 1.0 if multiplier in (None, AUTO) else float(multiplier)
    return BASE_LEARNING_RATE[method] * factor


def auto_batch_size(example_count: int) -> int:
    """About ``AUTO_STEPS_PER_EPOCH`` steps per epoch: ``N / 8`` rounded to a power of two, in 1..32."""
    target = max(1.0, example_count / AUTO_STEPS_PER_EPOCH)
    return int(min(MAX_AUTO_BATCH_SIZE, 2 ** round(math.log2(target))))


def auto_epochs(example_count: int, batch_size: int) -> int:
    """3 epochs; more (≤ 25) until the run makes ``MIN_AUTO_STEPS`` steps; fewer so it sees ≤ 25,000 examples."""
    steps_per_epoch = math.ceil(example_count / batch_size)
    epochs = DEFAULT_EPOCHS
    if steps_per_epoch * epochs < MIN_AUTO_STEPS:
        epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_AUTO_STEPS / steps_per_epoch))
    elif example_count * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(1, MAX_TARGET_EXAMPLES // example_count)
    return epochs


def auto_learning_rate_multiplier(parameter_count: int) -> float:
    """``(7e9 / parameters) ** (1/3)`` within [0.1, the API's cap]; 1.0 when the size is unknown (0)."""
    if parameter_count <= 0:
        return 1.0
    factor = (REFERENCE_PARAMETERS / parameter_count) ** LR_SIZE_EXPONENT
    high = HYPERPARAMETERS["learning_rate_multiplier"].high
    # Rounded to 3 significant digits: the job object shows it, and a user may send it back.
    return float(f"{min(high, max(MIN_AUTO_MULTIPLIER, factor)):.3g}")


def resolve_hyperparameters(
    *,
    hyperparameters: dict[str, Any],
    tuning_method: str,
    example_count: int,
    parameter_count: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Replace every ``"auto"`` by a concrete value from the data size and the model size; add ``learning_rate``.

    Resolved at create time: files are validated at upload, so their example count is known,
    and a registered base model knows its parameter count.

    - batch_size: ``N / 8`` rounded to a power of two, within 1..32 (about 8 steps per epoch),
      then up to a multiple of ``world_size`` (each process of a distributed run takes an equal share).
    - n_epochs: None when ``max_steps`` is set; else 3, raised (≤ 25) until the run makes ≥ 100
      optimizer steps, lowered so it sees ≤ 25,000 examples.
    - learning_rate_multiplier: ``(7e9 / parameters) ** (1/3)`` (1.0 for a 7B model, more for
      smaller ones; 1.0 when ``parameter_count`` is 0, unknown), times the method's base rate.
    """
    n = max(1, example_count)
    out = dict(hyperparameters)
    # The batch size first: the epoch rule counts optimizer steps.
    if out["batch_size"] == AUTO:
        # A batch the processes cannot split evenly would be refused; "auto" must never be.
        out["batch_size"] = -(-auto_batch_size(n) // world_size) * world_size
    if "max_steps" in out:
        out["n_epochs"] = None  # the run is bounded by steps, not epochs (the engine takes one of them)
    elif out["n_epochs"] == AUTO:
        out["n_epochs"] = auto_epochs(n, out["batch_size"] * out.get("grad_accum_steps", 1))
    if out["learning_rate_multiplier"] == AUTO:
        out["learning_rate_multiplier"] = auto_learning_rate_multiplier(parameter_count)
    out["learning_rate"] = learning_rate(tuning_method, out["learning_rate_multiplier"])
    return out


def train_config_values(job: TuningJob) -> dict[str, Any]:
    """``TrainConfig`` field values from a job row: method, LoRA columns, seed, resolved hyperparameters.

    No paths and no ``resume``: those depend on where and which attempt runs. A stored
    ``None`` or ``"auto"`` leaves the engine's default; a stored ``learning_rate`` wins over
    the multiplier (the row says what the job was created with).
    """
    stored = job.resolved_hyperparameters or {}
    example_count = job.training_file.example_count if job.training_file_id else 0
    steps = estimated_total_steps(stored, example_count) or 0
    values: dict[str, Any] = {
        "method": job.method,
        "rank": job.lora_rank,
        "alpha": float(job.lora_alpha),
        "dropout": float(job.lora_dropout),
        "seed": int(job.seed),
        # A long run checkpoints less often by default, so it stays within the checkpoint quota.
        "checkpoint_every": max(
            DEFAULT_CHECKPOINT_EVERY, math.ceil(steps / max(1, int(settings.TUNINGLAB["MAX_CHECKPOINTS_PER_RUN"])))
        ),
        "log_every": max(1, math.ceil(steps / METRICS_POINTS_PER_RUN)),
    }
    if job.target_modules:
        values["target_modules"] = list(job.target_modules)
    if job.method == TuningJob.Method.QLORA:
        values["quant_bits"] = QLORA_QUANT_BITS
    for name, value in stored.items():
        spec = HYPERPARAMETERS.get(name)
        if spec is None or name == "learning_rate_multiplier" or value is None or value == AUTO:
            continue
        values[spec.engine_field or name] = value
    if stored.get("learning_rate") is not None:
        values["learning_rate"] = stored["learning_rate"]
    else:
        values["learning_rate"] = learning_rate(job.method, stored.get("learning_rate_multiplier"))
    return values


def unknown_hyperparameters(job: TuningJob) -> list[str]:
    """Stored hyperparameter keys ``train_config_values`` does not use (reported as a warning)."""
    stored = job.resolved_hyperparameters or {}
    return sorted(name for name in stored if name not in HYPERPARAMETERS and name not in RESOLVED_ONLY)
