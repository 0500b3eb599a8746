"""Adapter directory → ``ModelVersion``: the registry's entry point for finished jobs.

It stores the adapter's files under ``DATA_DIR/adapters/<name>/v<N>/`` and the row, together.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from lora_engine.fsio import fsync_tree
from registry.models import ModelVersion
from registry.naming import NAME_RE, registered_model_name

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterError(ValueError):
    """The adapter dir is not a complete PEFT-format adapter."""


def model_version_create_from_job(
    *, job: Any, adapter_dir: str | Path, name: str | None = None, metrics: dict[str, Any] | None = None
) -> ModelVersion:
    """Copy the job's adapter to ``DATA_DIR/adapters/<name>/v<N>/`` and create version N.

    N is max+1 for the name, decided in the transaction that inserts the row; the unique
    (name, version) constraint settles a race between two jobs of the same line (the loser
    retries with the next number). The files are copied to a staging dir and fsynced first,
    then renamed into place, so ``v<N>`` is either complete or absent. Called inside the
    runner's fenced transaction: if that rolls back, the runner removes ``adapter_path``.
    Idempotent per job: a job that already has a version gets that version back.

    Raises:
        AdapterError: ``adapter_dir`` lacks ``adapter_config.json`` or the safetensors file.
    """
    existing = ModelVersion.objects.filter(job=job).first()
    if existing is not None:
        return existing
    src = Path(adapter_dir)
    missing = [f for f in ADAPTER_FILES if not (src / f).is_file()]
    if missing:
        raise AdapterError(f"adapter dir {src} is missing {', '.join(missing)}")
    name = name or registered_model_name(job)
    if not NAME_RE.match(name):
        raise AdapterError(f"invalid registered model name {name!r}")

    root = Path(settings.DATA_DIR) / "adapters" / name
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(src, staging)
    fsync_tree(staging)
    try:
        for _ in range(5):
            try:
                with transaction.atomic():
                    current = ModelVersion.objects.filter(name=name).aggregate(m=Max("version"))["m"] or 0
                    version = current + 1
                    final = root / f"v{version}"
                    if final.exists():
                        # Left by a rolled-back attempt: no row points at it.
                        shutil.rmtree(final)
                    os.rename(staging, final)
                    try:
                        return ModelVersion.objects.create(
                            owner=job.owner,
                            name=name,
                            version=version,
                            base_model=job.base_model,
                            job=job,
                            adapter_path=str(final),
                            metrics=metrics or {},
                        )
                    except BaseException:
                        os.rename(final, staging)
                        raise
            except IntegrityError:
                continue  # another job took version N (or this job already has a version)
        raise IntegrityError(f"could not allocate a version for {name}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
