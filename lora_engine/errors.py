"""Engine errors with the stable codes of the engine <-> worker contract.

Every failure the worker must understand is an `EngineError` carrying a `code`
from `ERROR_CODES`; the training entry point turns it into one protocol `error`
line and exit code `EXIT_ERROR` (both defined in `lora_engine.protocol`).
"""

from __future__ import annotations

OUT_OF_MEMORY = "out_of_memory"
NAN_DETECTED = "nan_detected"
INVALID_TRAINING_DATA = "invalid_training_data"
BASE_MODEL_MISSING = "base_model_missing"
DISK_FULL = "disk_full"
INVALID_CONFIG = "invalid_config"
INTERNAL_ERROR = "internal_error"

ERROR_CODES = (
    OUT_OF_MEMORY,
    NAN_DETECTED,
    INVALID_TRAINING_DATA,
    BASE_MODEL_MISSING,
    DISK_FULL,
    INVALID_CONFIG,
    INTERNAL_ERROR,
)

# What the user should try next; shown verbatim in the job's error.
DEFAULT_SUGGESTIONS = {
    OUT_OF_MEMORY: "lower batch_size or rank, enable gradient checkpointing or QLoRA",
    NAN_DETECTED: "lower the learning_rate, set max_grad_norm (e.g. 1.0), or train in fp32",
    INVALID_TRAINING_DATA: "fix the reported line of the training file and upload it again",
    BASE_MODEL_MISSING: "check that base_model_dir points at a local Hugging Face model directory",
    DISK_FULL: "free disk space in the output directory or lower keep_checkpoints",
    INVALID_CONFIG: "fix the reported config field",
    INTERNAL_ERROR: "retry the job; if it fails again, report the train.log",
}


class EngineError(Exception):
    """A failure with a stable `code`, a human message, the offending `param` and a hint."""

    def __init__(self, code: str, message: str, *, param: str | None = None, suggestion: str | None = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown engine error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.suggestion = suggestion if suggestion is not None else DEFAULT_SUGGESTIONS[code]

    def __str__(self) -> str:  # pragma: no cover - trivial
        where = f" ({self.param})" if self.param else ""
        return f"{self.code}: {self.message}{where}"


class ConfigError(EngineError):
    """A `TrainConfig` field is invalid or contradicts another field."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(INVALID_CONFIG, message, param=param)


class DataError(EngineError):
    """A training/validation record cannot be used; `param` names the file and line."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(INVALID_TRAINING_DATA, message, param=param)
