"""Cleanup: delete what finished work left behind, never what a live job or a version still needs.

``cleanup_run`` (``manage.py cleanup``, and periodically: the beat task on the maintenance
queue, or the embedded worker when idle) removes, under ``settings.DATA_DIR``:

* the directories of jobs that finished (succeeded, failed, cancelled) more than
  ``RETAIN_JOB_DIRS_DAYS`` ago, and of jobs whose row is gone; a queued or running job's
  directory is never touched, nor one that holds a version's files, nor one whose version
  MLflow has not mirrored yet (the mirror reads the run's metrics and logs from it);
* registry leftovers: ``.staging-*`` copies a crash interrupted (older than
  ``STALE_TEMP_SECONDS``) and ``.orphan-v*`` directories a crashed registration set aside
  (older than the retention period, so an operator can look first);
* upload leftovers: interrupted temp files and blobs no live row points at;

and in the database: ``Checkpoint`` rows of finished jobs whose directory is gone (the engine
prunes checkpoint directories as it goes; ``checkpoint_rows_prune`` drops a running job's rows
as that happens) and idempotency records past their TTL.

With ``dry_run`` it only reports what it would delete and how many bytes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from registry.models import ModelVersion
from tuninglab import datapaths
from tuninglab.idempotency import idempotency_records_purge
from tunings.models import Checkpoint, TuningJob
from tunings.services.files import orphan_upload_files_collect

# A temp copy older than this belongs to a process that died: staging a version (a copy and a
# hash, minutes for full weights) or receiving an upload never takes this long.
STALE_TEMP_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Removal:
    """One thing deleted (or, in a dry run, to delete): a path and its bytes."""

    kind: str
    path: Path
    bytes: int


@dataclass
class CleanupReport:
    """What a cleanup deleted, or would delete with ``dry_run``."""

    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    checkpoint_rows: int = 0
    idempotency_records: int = 0

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def count(self, kind: str) -> int:
        return sum(1 for r in self.removals if r.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        kinds = sorted({r.kind for r in self.removals})
        return {
            "dry_run": self.dry_run,
            "bytes": self.bytes,
            **{kind: self.count(kind) for kind in kinds},
            "checkpoint_rows": self.checkpoint_rows,
            "idempotency_records": self.idempotency_records,
        }


def _data_dir() -> Path:
    return Path(settings.DATA_DIR)


def _stored_path(path: str) -> Path:
    """Stored paths are relative to DATA_DIR; absolute ones stay as they are."""
    return _data_dir() / path  # joining an absolute path yields it unchanged


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed, unreadable entries skipped)."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _mtime(path: Path) -> float | None:
    try:
        return path.lstat().st_mtime
    except OSError:
        return None


def _version_paths() -> list[Path]:
    """Every registered version's directory: nothing that holds one is ever deleted."""
    return [_stored_path(p).resolve() for p in ModelVersion.objects.values_list("adapter_path", flat=True) if p]


def _holds_version(path: Path, versions: list[Path]) -> bool:
    resolved = path.resolve()
    return any(v == resolved or v.is_relative_to(resolved) or resolved.is_relative_to(v) for v in versions)


def _job_dirs_to_delete(*, now: Any, versions: list[Path]) -> list[Path]:
    """Directories of jobs finished before the retention cutoff (or of jobs whose row is gone)."""
    root = datapaths.jobs_root()
    try:
        dirs = {p.name: p for p in root.iterdir() if p.is_dir() and not p.is_symlink()}
    except OSError:
        return []
    if not dirs:
        return []
    cutoff = now - timedelta(days=int(settings.TUNINGLAB["RETAIN_JOB_DIRS_DAYS"]))
    jobs = {
        job_id: (status, finished_at or updated_at)
        for job_id, status, finished_at, updated_at in TuningJob.objects.filter(id__in=list(dirs)).values_list(
            "id", "status", "finished_at", "updated_at"
        )
    }
    # The MLflow mirror of a version reads its job's metrics.jsonl and attempt logs: keep those
    # until the version is mirrored (registry_sync retries after an MLflow outage).
    unmirrored: set[str] = set()
    if settings.TUNINGLAB.get("MLFLOW_ENABLED"):
        unmirrored = set(
            ModelVersion.objects.filter(job_id__in=list(dirs), mlflow_synced_at__isnull=True).values_list(
                "job_id", flat=True
            )
        )
    out = []
    for job_id, path in sorted(dirs.items()):
        if job_id in jobs:
            status, finished = jobs[job_id]
            if status not in TuningJob.TERMINAL or finished is None or finished >= cutoff:
                continue  # queued, running, or finished recently: never touched
            if job_id in unmirrored:
                continue
        else:
            # No row (the owner was deleted, and their jobs with them): age by the directory.
            mtime = _mtime(path)
            if mtime is None or mtime >= cutoff.timestamp():
                continue
        if _holds_version(path, versions):
            continue
        out.append(path)
    return out


def _registry_leftovers(*, now: Any, versions: list[Path]) -> list[tuple[str, Path]]:
    """``.staging-*`` copies past ``STALE_TEMP_SECONDS`` and ``.orphan-v*`` dirs past the retention period."""
    root = datapaths.adapters_root()
    if not root.is_dir():
        return []
    retain = timedelta(days=int(settings.TUNINGLAB["RETAIN_JOB_DIRS_DAYS"])).total_seconds()
    ages = (("staging_dir", ".staging-*", STALE_TEMP_SECONDS), ("orphan_version_dir", ".orphan-v*", retain))
    out = []
    for kind, pattern, max_age in ages:
        for path in sorted(root.glob(f"*/*/{pattern}")):
            mtime = _mtime(path)
            if mtime is None or mtime >= now.timestamp() - max_age or path.is_symlink():
                continue
            if not _holds_version(path, versions):
                out.append((kind, path))
    return out


def checkpoint_rows_prune(*, job_id: str) -> int:
    """Delete a job's ``Checkpoint`` rows whose directory is gone; returns how many.

    The engine keeps the newest ``keep_checkpoints`` directories and deletes older ones after
    each save; this makes the rows follow. The worker calls it after recording a checkpoint
    (the rows of one job are only the few kept plus the one just pruned: a stat each).
    """
    rows = Checkpoint.objects.filter(job_id=job_id).values_list("id", "path")
    gone = [pk for pk, path in rows if not path or not _stored_path(path).is_dir()]
    if gone:
        Checkpoint.objects.filter(id__in=gone).delete()
    return len(gone)


def _finished_checkpoint_rows_gone(deleted_dirs: list[Path]) -> list[str]:
    """Ids of finished jobs' checkpoint rows whose directory is gone (or is under ``deleted_dirs``)."""
    rows = Checkpoint.objects.filter(job__status__in=TuningJob.TERMINAL).values_list("id", "path")
    out = []
    for pk, path in rows.iterator(chunk_size=2000):
        where = _stored_path(path) if path else None
        if where is None or not where.is_dir() or any(where.is_relative_to(d) for d in deleted_dirs):
            out.append(pk)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def cleanup_run(*, dry_run: bool = False, now: Any = None) -> CleanupReport:
    """Delete finished jobs' directories, registry and upload leftovers, dead checkpoint rows and
    expired idempotency records (see the module docstring); ``dry_run`` only reports them."""
    now = now or timezone.now()
    report = CleanupReport(dry_run=dry_run)
    versions = _version_paths()
    job_dirs = _job_dirs_to_delete(now=now, versions=versions)
    leftovers = [("job_dir", p) for p in job_dirs] + _registry_leftovers(now=now, versions=versions)
    for kind, path in leftovers:
        report.removals.append(Removal(kind=kind, path=path, bytes=tree_bytes(path)))
        if not dry_run:
            _remove(path)
    older_than = now.timestamp() - STALE_TEMP_SECONDS
    for path, size in orphan_upload_files_collect(older_than=older_than, dry_run=dry_run):
        report.removals.append(Removal(kind="upload_leftover", path=path, bytes=size))

    gone = _finished_checkpoint_rows_gone(job_dirs if dry_run else [])
    report.checkpoint_rows = len(gone)
    if gone and not dry_run:
        for start in range(0, len(gone), 500):
            Checkpoint.objects.filter(id__in=gone[start : start + 500]).delete()
    report.idempotency_records = idempotency_records_purge(now=now, dry_run=dry_run)
    return report
