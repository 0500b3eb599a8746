"""The one error an evaluation or comparison fails with: a stable ``code`` and a message.

Stored as ``{"code", "message"}`` in the row's ``error``. Torch-free, so the runner (imported
by every process) can catch what the heavy scoring module raises.
"""

from __future__ import annotations

from typing import Any

DATASET_MISSING = "dataset_missing"
VERSION_FILES_MISSING = "version_files_missing"
BASE_MODEL_MISSING = "base_model_missing"
INVALID_ADAPTER = "invalid_adapter"
INVALID_EVALUATION_DATA = "invalid_evaluation_data"
INVALID_CONFIG = "invalid_config"
INTERNAL_ERROR = "internal_error"


class EvaluationError(Exception):
    """Why a run failed, in the words stored on its row."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}
