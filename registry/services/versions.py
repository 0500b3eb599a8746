"""A finished job's result → version N of its registered model, files and lineage together.

Layout: ``DATA_DIR/adapters/<owner id>/<model name>/v<N>/``. The owner's id (not a slug of
the username) is the first path part, so two owners' names can never share a directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from lora_engine.fsio import fsync_dir, fsync_tree
from registry.lineage import code_version, environment, metrics_from_log, sha256_file, sha256_files
from registry.models import ModelVersion, RegisteredModel
from registry.naming import NAME_RE, default_model_name
from registry.services.base_models import BaseModelError, base_model_fill_content_hash
from registry.services.evaluations import evaluation_queue_automatic
from registry.services.notify import request_registry_sync
from tuninglab import datapaths

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Pickle-based weight files execute code when loaded: a version never carries one.
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class AdapterError(ValueError):
    """The result dir is not a complete adapter (or full-weights) directory."""


def _weight_files(src: Path, kind: str) -> list[str]:
    """The weight files of a result dir after checking it is complete and safetensors-only."""
    unsafe = sorted(p.name for p in src.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise AdapterError(
            f"{src} holds pickle-based weight files ({', '.join(unsafe)}); only safetensors are accepted"
        )
    if kind == ModelVersion.Kind.ADAPTER:
        missing = [f for f in ADAPTER_FILES if not (src / f).is_file()]
        if missing:
            raise AdapterError(f"adapter dir {src} is missing {', '.join(missing)}")
        return [ADAPTER_WEIGHTS]
    weights = sorted(p.name for p in src.glob("*.safetensors"))
    if not (src / "config.json").is_file() or not weights:
        raise AdapterError(f"full-weights dir {src} needs config.json and *.safetensors")
    return weights


def version_dir_root(*, owner_id: Any, name: str) -> Path:
    """Where the versions of ``(owner, name)`` live."""
    return datapaths.adapters_root() / str(owner_id) / name


def _lineage(job: Any, *, base_hash: str, config: dict[str, Any] | None, device: str | None) -> dict[str, Any]:
    base = job.base_model
    files = {}
    for param, file in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        files[param] = {"id": file.id, "sha256": file.sha256, "examples": file.example_count} if file else None
    return {
        "base_model": {"name": base.name, "content_hash": base_hash, "path": base.path},
        "method": job.method,
        "lora": (
            None
            if job.method == "full"
            else {
                "rank": job.lora_rank,
                "alpha": job.lora_alpha,
                "dropout": job.lora_dropout,
                "target_modules": list(job.target_modules or []),
            }
        ),
        "hyperparameters": job.hyperparameters,
        "resolved_hyperparameters": job.resolved_hyperparameters,
        "config": config or {},
        "seed": job.seed,
        "files": files,
        "environment": environment(device=device),
        "code_version": code_version(),
        "job": {
            "id": job.id,
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "attempts": job.attempt,
        },
        "registered_at": timezone.now().isoformat(),
    }


@dataclass(frozen=True)
class StagedResult:
    """A job's result copied next to its final place, fsynced and hashed; not registered yet."""

    path: Path
    root: Path
    name: str
    kind: str
    sha256: str
    size_bytes: int
    base_content_hash: str
    """The base's content hash the version records as what it was trained on ("" when unknown)."""

    def discard(self) -> None:
        """Remove the staging copy (a no-op once it was renamed into place)."""
        shutil.rmtree(self.path, ignore_errors=True)


def model_version_stage(*, job: Any, adapter_dir: str | Path) -> StagedResult:
    """Check, copy, fsync and hash a job's result dir: the slow part, done outside any transaction.

    The runner stages before it takes the job's row lock: copying and hashing full weights
    can take minutes, and the lease heartbeat must keep running meanwhile.

    Raises:
        AdapterError: the dir is incomplete, holds pickle weights, or the name is invalid.
    """
    kind = ModelVersion.Kind.FULL if job.method == "full" else ModelVersion.Kind.ADAPTER
    src = Path(adapter_dir)
    if not src.is_dir():
        raise AdapterError(f"result dir {src} does not exist")
    weights = _weight_files(src, kind)
    name = job.model_name or default_model_name(suffix=job.suffix, base_name=job.base_model.name)
    if not NAME_RE.match(name):
        raise AdapterError(f"invalid registered model name {name!r}")
    root = version_dir_root(owner_id=job.owner_id, name=name)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    try:
        shutil.copytree(src, staging)
        fsync_tree(staging)
        digest = sha256_file(staging / weights[0]) if len(weights) == 1 else sha256_files(staging, weights)
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        # Bases registered before hashes existed get theirs now (hashing a large base takes
        # minutes: here, outside the transaction). A base whose files are gone stays unknown,
        # and the pre-promotion check refuses such a version (base_hash_unknown).
        base_hash = base_model_fill_content_hash(base_model=job.base_model)
    except BaseModelError as exc:
        log.warning("job %s: base model %s has no content hash: %s", job.id, job.base_model.name, exc)
        base_hash = ""
    return StagedResult(
        path=staging, root=root, name=name, kind=kind, sha256=digest, size_bytes=size, base_content_hash=base_hash
    )


def model_version_create_from_job(
    *,
    job: Any,
    adapter_dir: str | Path | None = None,
    staged: StagedResult | None = None,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    metrics_file: Path | None = None,
    device: str | None = None,
) -> ModelVersion:
    """Register a finished job's adapter (or full weights) as the next version of its model.

    Pass ``staged`` (from ``model_version_stage``) or ``adapter_dir`` (staged here). The job's
    ``model_name`` (default: its suffix, else ``<base>-ft``) names the owner's registered
    model. Version N is max+1 under a row lock on that registered model, held until the
    caller's transaction commits, so two jobs finishing together for one name get N and N+1
    and neither can touch the other's directory. The staged dir is renamed to ``v<N>``: the
    directory is complete or absent. Called inside the runner's fenced transaction: if that
    rolls back, the runner removes ``adapter_path``. Idempotent per job: a job that already
    has a version gets that version back.

    Raises:
        AdapterError: the dir is incomplete, holds pickle weights, or the name is invalid.
    """
    existing = ModelVersion.objects.filter(job=job).first()
    if existing is not None:
        return existing
    own_staging = staged is None  # a caller's staged copy is the caller's to discard (it may retry)
    if staged is None:
        if adapter_dir is None:
            raise AdapterError("pass the result dir or a staged copy of it")
        staged = model_version_stage(job=job, adapter_dir=adapter_dir)
    root = staged.root
    all_metrics = {**metrics_from_log(metrics_file), **(metrics or {})}
    try:
        with transaction.atomic():
            registered, _ = RegisteredModel.objects.get_or_create(owner_id=job.owner_id, name=staged.name)
            # The lock serialises version numbering per (owner, name) until our transaction ends.
            RegisteredModel.objects.select_for_update().filter(pk=registered.pk).values_list("pk").first()
            current = ModelVersion.objects.filter(registered_model=registered).aggregate(m=Max("version"))["m"]
            version = (current or 0) + 1
            final = root / f"v{version}"
            if final.exists():
                # No committed row points here (numbers are taken under the lock): a crashed
                # attempt left it. Set it aside rather than delete what we cannot account for.
                os.rename(final, root / f".orphan-v{version}-{uuid.uuid4().hex[:8]}")
            os.rename(staged.path, final)
            fsync_dir(root)
            try:
                return ModelVersion.objects.create(
                    registered_model=registered,
                    owner_id=job.owner_id,
                    version=version,
                    kind=staged.kind,
                    base_model=job.base_model,
                    job=job,
                    adapter_path=str(final),
                    sha256=staged.sha256,
                    size_bytes=staged.size_bytes,
                    lineage=_lineage(job, base_hash=staged.base_content_hash, config=config, device=device),
                    metrics=all_metrics,
                )
            except BaseException:
                os.rename(final, staged.path)
                raise
    finally:
        if own_staging:
            staged.discard()


def model_version_after_registration(*, version_id: str) -> None:
    """Follow-ups of a committed version: mirror it to MLflow, evaluate it on its validation file.

    Never raises: the version is registered whatever happens here, and both follow-ups can be
    redone (``manage.py registry_sync``, ``manage.py evaluate``).
    """
    try:
        request_registry_sync()
    except Exception:
        log.exception("version %s: could not request the MLflow sync", version_id)
    try:
        evaluation_queue_automatic(version_id=version_id)
    except Exception:
        log.exception("version %s: could not queue its automatic evaluation", version_id)
