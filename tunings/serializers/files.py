"""The file object, OpenAI shape plus our extras (format, counts, sha256, validation, stats)."""

from __future__ import annotations

from typing import Any

from tunings.models import TrainingFile


def file_to_dict(file: TrainingFile) -> dict[str, Any]:
    """``{"id","object":"file","bytes","created_at","filename","purpose","status",...}``.

    ``created_at`` is a unix timestamp (int) as in OpenAI's API; ``status_details`` is null for
    processed files. Rejected uploads are never stored, so ``validation.errors`` is empty for
    every file the API returns (the errors come back in the 400 answer of the upload).
    Reads only the row's fields (``stats`` included), so a page of files costs no extra query or disk read.
    """
    errors = list(file.validation_errors or [])
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at.timestamp()),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "status_details": None if file.status == TrainingFile.Status.PROCESSED else f"{len(errors)} problem(s)",
        "format": file.format,
        "example_count": file.example_count,
        "token_estimate": file.token_estimate,
        "sha256": file.sha256,
        "validation": {"errors": errors, "error_count": len(errors)},
        "stats": file.stats,
    }


def file_deleted_to_dict(file_id: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": True}
