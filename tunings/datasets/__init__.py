"""Dataset validation for uploads: JSONL → per-line problems (line + stable code) and stats.

Django-free on purpose (limits are arguments, not settings) so it can be tested and reused
without a request: ``tunings.services.files`` calls ``validate_jsonl`` on the staged upload.
Record-level reading (formats, roles, contents) is ``lora_engine.formats``, shared with the
engine, so what passes here is exactly what the training run reads.
"""

from __future__ import annotations

from tunings.datasets.stats import DatasetStats
from tunings.datasets.tokens import CHARS_PER_TOKEN, MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from tunings.datasets.validation import (
    EMPTY_FILE,
    ERROR_CODES,
    INVALID_ENCODING,
    INVALID_JSON,
    LINE_TOO_LONG,
    MAX_REPORTED_ERRORS,
    TOO_FEW_EXAMPLES,
    ValidationReport,
    validate_jsonl,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "EMPTY_FILE",
    "ERROR_CODES",
    "INVALID_ENCODING",
    "INVALID_JSON",
    "LINE_TOO_LONG",
    "MAX_REPORTED_ERRORS",
    "MESSAGE_OVERHEAD_TOKENS",
    "TOO_FEW_EXAMPLES",
    "DatasetStats",
    "ValidationReport",
    "estimate_tokens",
    "validate_jsonl",
]
