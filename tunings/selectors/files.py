"""Reads for training files — always scoped to the caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from tuninglab.errors import NotFoundError
from tunings.models import TrainingFile


def training_file_list(*, owner: Any) -> QuerySet[TrainingFile]:
    """The caller's live files, newest first (the model's ordering; pagination adds the id tie-breaker)."""
    return TrainingFile.objects.filter(owner=owner, deleted_at__isnull=True)


def training_file_get(*, owner: Any, file_id: str, param: str = "file_id") -> TrainingFile:
    """The caller's live file. Someone else's id, or a deleted file, is a 404 like an id that does not exist."""
    file = TrainingFile.objects.filter(id=file_id, owner=owner, deleted_at__isnull=True).first()
    if file is None:
        raise NotFoundError(f"No such file: {file_id}.", code="not_found", param=param)
    return file


def training_file_path(*, file: TrainingFile) -> Path:
    """Absolute path of the file's bytes (content-addressed, shared by rows with equal content)."""
    return Path(settings.DATA_DIR) / file.storage_path
