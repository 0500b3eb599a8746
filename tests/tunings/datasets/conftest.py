"""Fixtures for the datasets suite: the committed sample files and upload helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

DATA = Path(__file__).resolve().parent / "data"

# Each committed good sample and the format it is detected as.
GOOD_SAMPLES = [
    ("good_openai_chat.jsonl", "openai_chat"),
    ("good_alpaca.jsonl", "alpaca"),
    ("good_sharegpt.jsonl", "sharegpt"),
    ("good_chatglm3.jsonl", "chatglm3"),
    ("good_prompt_completion.jsonl", "prompt_completion"),
]
# Each committed bad sample with the one error code it must raise and the line it names
# (None: a whole-file problem).
BAD_SAMPLES = [
    ("bad_invalid_json.jsonl", "invalid_json", 4),
    ("bad_not_an_object.jsonl", "not_an_object", 3),
    ("bad_unknown_format.jsonl", "unknown_format", 5),
    ("bad_mixed_formats.jsonl", "mixed_formats", 7),
    ("bad_unknown_role.jsonl", "unknown_role", 2),
    ("bad_missing_assistant_turn.jsonl", "missing_assistant_turn", 6),
    ("bad_empty_content.jsonl", "empty_content", 8),
    ("bad_line_too_long.jsonl", "line_too_long", 3),
    ("bad_invalid_encoding.jsonl", "invalid_encoding", 4),
    ("bad_missing_field.jsonl", "missing_field", 9),
    ("bad_invalid_type.jsonl", "invalid_type", 5),
    ("bad_too_few_examples.jsonl", "too_few_examples", None),
    ("bad_empty_file.jsonl", "empty_file", None),
]


def sample(name: str) -> bytes:
    """Bytes of a committed sample file under tests/datasets/data/."""
    return (DATA / name).read_bytes()


def upload_multipart(client, name: str, content: bytes | None = None, *, purpose: str = "fine-tune", **extra):
    """POST /v1/files as multipart/form-data, the way the openai package does."""
    body = sample(name) if content is None else content
    data = {"file": SimpleUploadedFile(name, body, content_type="application/jsonl"), "purpose": purpose}
    return client.post("/v1/files", data, format="multipart", **extra)


def upload_raw(client, content: bytes, *, query: str = "", content_type: str = "application/jsonl", **extra):
    """POST /v1/files with the JSONL as the raw body."""
    return client.generic("POST", f"/v1/files{query}", content, content_type=content_type, **extra)


def stored_files(data_dir: Path) -> list[Path]:
    """Every regular file under DATA_DIR except the SQLite db and the storage lock file."""
    return sorted(
        p for p in Path(data_dir).rglob("*") if p.is_file() and p.name != ".lock" and not p.name.startswith("db.")
    )


@pytest.fixture
def small_limits(settings):
    """Tight limits so size/line tests need only small payloads."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_LINE_BYTES": 1024, "MAX_UPLOAD_BYTES": 20 * 1024}
    return settings.TUNINGLAB
