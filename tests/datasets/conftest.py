"""Fixtures for the datasets suite: the committed sample files and upload helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


def sample(name: str) -> bytes:
    """Bytes of a committed sample file under tests/datasets/data/."""
    return (DATA / name).read_bytes()


def upload_multipart(client, name: str, content: bytes | None = None, *, purpose: str = "fine-tune", **extra):
    """POST /v1/files as multipart/form-data, the way the openai package does."""
    from django.core.files.uploadedfile import SimpleUploadedFile

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


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The shared ``user`` fixtures set passwords; PBKDF2 would dominate this suite's run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
