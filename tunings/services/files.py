"""Training file storage: stage bytes to a temp file, validate, store content-addressed, record the row.

Storage layout under ``settings.DATA_DIR``::

    tmp/upload-<random>.part           bytes being received (deleted on any failure)
    files/<sha256[:2]>/<sha256>.jsonl   the content, shared by every live row with that content
    files/.lock                         flock serialising "place blob / add row" with "drop row / GC blob"

The dataset stats are computed once at upload and stored on the row (``TrainingFile.stats``),
so reading a file, or a page of them, touches the database only.

The rule is "bad input gets a clear error, never half-written": an upload that is too large
or invalid leaves no row and no bytes; a live row always has its bytes (a soft-deleted row,
kept for the jobs that used it, may not). Bytes are fsynced before the rename that publishes
them, and the row is inserted after they are in place.

HTTP intake (Django's upload handlers and parsers) lives in ``tunings.apis.uploads``; it feeds
bytes to ``UploadStager`` and hands the resulting ``StagedUpload`` to ``training_file_create``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from lora_engine.fsio import fsync_dir, publish_file
from tuninglab.errors import ConflictError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from tunings.datasets import ValidationReport, validate_jsonl
from tunings.models import TrainingFile, TuningJob

PURPOSES = ("fine-tune",)
DEFAULT_FILENAME = "upload.jsonl"
CHUNK_BYTES = 1024 * 1024
NON_TERMINAL = (TuningJob.Status.VALIDATING_FILES, TuningJob.Status.QUEUED, TuningJob.Status.RUNNING)


# --- errors ----------------------------------------------------------------------------------


def file_too_large_error(max_bytes: int) -> PayloadTooLargeError:
    """413 ``file_too_large`` naming the limit in MB."""
    limit = f"{max_bytes / (1024 * 1024):g} MB"
    return PayloadTooLargeError(
        f"The upload is larger than the {limit} limit; nothing was stored.",
        code="file_too_large",
        param="file",
        suggestion="Split the dataset into smaller files, or raise TUNINGLAB_MAX_UPLOAD_MB on the server.",
    )


class DatasetValidationError(InvalidRequestError):
    """400 for an invalid dataset: the first problem as the error, every problem in ``details``."""

    def __init__(self, report: ValidationReport) -> None:
        first = report.errors[0]
        more = report.error_count - 1
        message = first["message"] + (f" ({more} more problem(s), see error.details)" if more else "")
        super().__init__(
            message,
            code=first["code"],
            param=f"line {first['line']}" if first["line"] is not None else "file",
            suggestion="Fix the reported lines and upload the file again; nothing was stored.",
        )
        self.details = report.errors
        self.error_count = report.error_count

    def as_dict(self) -> dict[str, Any]:
        body = super().as_dict()
        body["details"] = self.details
        body["error_count"] = self.error_count
        return body


# --- paths -----------------------------------------------------------------------------------


def blob_relpath(sha256: str) -> str:
    """Content-addressed path of a file's bytes, relative to DATA_DIR."""
    return f"files/{sha256[:2]}/{sha256}.jsonl"


def _data_dir() -> Path:
    return Path(settings.DATA_DIR)


_lock_state = threading.local()


@contextlib.contextmanager
def _storage_lock() -> Iterator[None]:
    """Exclusive lock over the blob store (one host): placing a blob and adding its row must not
    interleave with dropping the last row of the same content and deleting the blob.

    Re-entrant per thread: an on_commit hook may fire (and lock) while the lock is held, and
    flock on a second descriptor of the same file would wait for ourselves forever.
    """
    if getattr(_lock_state, "held", False):
        yield
        return
    lock_dir = _data_dir() / "files"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_state.held = True
        try:
            yield
        finally:
            _lock_state.held = False
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- staging: request bytes -> temp file, hashed and counted as they arrive --------------------


@dataclass
class StagedUpload:
    """Bytes received into ``DATA_DIR/tmp``: complete and hashed (fsynced when placed in the store)."""

    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        """Delete the temp file if it is still there (it is gone once moved into the store)."""
        self.path.unlink(missing_ok=True)


class UploadStager:
    """Writes chunks to a fresh temp file, hashing and counting; over the cap it deletes and raises.

    ``upload_stage_stream`` drives it for a stream; a multipart upload handler drives it chunk
    by chunk as the parser hands them over.
    """

    def __init__(self, max_bytes: int) -> None:
        tmp_dir = _data_dir() / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.path = tmp_dir / f"upload-{secrets.token_hex(8)}.part"
        self.file: IO[bytes] = open(self.path, "xb")  # noqa: SIM115 - closed in finish/discard
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk; past ``max_bytes`` delete the temp file and raise ``file_too_large``."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            # Count, not Content-Length, is the truth: a lying or absent header stops here.
            self.discard()
            raise file_too_large_error(self.max_bytes)
        self.hasher.update(chunk)
        self.file.write(chunk)

    def finish(self) -> StagedUpload:
        """Close the temp file and describe it.

        No fsync here: ``publish_file`` syncs the bytes before renaming them into the store,
        and a temp file that never gets there need not survive a crash.
        """
        self.file.close()
        return StagedUpload(path=self.path, sha256=self.hasher.hexdigest(), size=self.size)

    def discard(self) -> None:
        """Close and delete the temp file (any failure path)."""
        self.file.close()
        self.path.unlink(missing_ok=True)


def upload_stage_stream(
    *, stream: Any, max_bytes: int, content_length: int | None = None, chunk_bytes: int = CHUNK_BYTES
) -> StagedUpload:
    """Copy a raw request body to a temp file, refusing more than ``max_bytes``.

    Reads ``stream.read(chunk)`` (never ``request.body``, which is capped at
    DATA_UPLOAD_MAX_MEMORY_SIZE and held in memory).

    Raises:
        PayloadTooLargeError: ``Content-Length`` or the bytes actually read exceed ``max_bytes``;
            nothing is left on disk.
    """
    if content_length is not None and content_length > max_bytes:
        raise file_too_large_error(max_bytes)
    stager = UploadStager(max_bytes)
    try:
        while chunk := stream.read(chunk_bytes):
            stager.write(chunk)
        return stager.finish()
    except BaseException:
        stager.discard()
        raise


# --- create / delete ---------------------------------------------------------------------------


def _clean_filename(raw: Any) -> str:
    """Basename only, printable, at most 255 characters; the default when nothing is left."""
    name = str(raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return DEFAULT_FILENAME
    return name[:255]


def _place_blob(staged: StagedUpload) -> bool:
    """Move the staged bytes to their content address. Returns False when they were already there."""
    final = _data_dir() / blob_relpath(staged.sha256)
    if final.exists() and final.stat().st_size == staged.size:
        return False
    if not final.parent.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(final.parent.parent)  # the new shard dir's own entry must survive a power cut too
    # fsync, atomic rename, fsync of the directory: readers see no file or the whole file,
    # and the bytes are on disk before the row that points at them is inserted.
    publish_file(staged.path, final)
    return True


def _drop_blob_if_unused(sha256: str) -> None:
    """Delete a blob that no live row references any more. Call under the lock.

    Soft-deleted rows do not keep bytes: a finished job whose file was deleted keeps the file's
    id and metadata, not its content.
    """
    if TrainingFile.objects.filter(sha256=sha256, deleted_at__isnull=True).exists():
        return
    (_data_dir() / blob_relpath(sha256)).unlink(missing_ok=True)


def _ensure_blob_after_commit(staged: StagedUpload) -> None:
    """After commit: if a concurrent delete collected the blob we reused, put our copy back."""
    with _storage_lock():
        if not (_data_dir() / blob_relpath(staged.sha256)).exists() and staged.path.exists():
            _place_blob(staged)
    staged.discard()


def training_file_create(*, owner: Any, upload: StagedUpload, filename: str, purpose: str) -> TrainingFile:
    """Validate a staged upload and store it: content-addressed bytes + a ``TrainingFile`` row.

    The row carries the dataset stats of this upload (``stats``); rows sharing a blob each hold
    their own copy, so no row's stats depend on another row or on a file next to the bytes.

    Always consumes ``upload``: its temp file is moved into the store or deleted.

    Raises:
        InvalidRequestError: ``invalid_purpose``.
        DatasetValidationError: the dataset has problems (400, every problem in ``details``);
            nothing is stored.
    """
    keep_for_commit = False
    try:
        if purpose not in PURPOSES:
            raise InvalidRequestError(
                f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}.",
                code="invalid_purpose",
                param="purpose",
            )
        report = validate_jsonl(
            upload.path,
            max_line_bytes=settings.TUNINGLAB["MAX_LINE_BYTES"],
            min_examples=settings.TUNINGLAB["MIN_EXAMPLES"],
        )
        if not report.ok:
            raise DatasetValidationError(report)
        stats = {"format": report.format, **report.stats.as_dict()}
        with _storage_lock():
            created_blob = _place_blob(upload)
            try:
                with transaction.atomic():
                    row = TrainingFile.objects.create(
                        owner=owner,
                        filename=_clean_filename(filename),
                        purpose=purpose,
                        sha256=upload.sha256,
                        bytes=upload.size,
                        storage_path=blob_relpath(upload.sha256),
                        format=report.format,
                        example_count=report.example_count,
                        token_estimate=report.stats.token_estimate,
                        stats=stats,
                        status=TrainingFile.Status.PROCESSED,
                        validation_errors=[],
                    )
                    if not created_blob:
                        # We reuse bytes another row owns. If that row is deleted before our
                        # row commits (an outer transaction may hold the commit past this lock),
                        # its GC cannot see us; keep our copy until commit to restore it if needed.
                        transaction.on_commit(partial(_ensure_blob_after_commit, upload))
                        keep_for_commit = True
            except BaseException:
                if created_blob:
                    _drop_blob_if_unused(upload.sha256)
                raise
        return row
    finally:
        # The temp file was moved into the store, or is not needed: delete it. When an
        # on_commit hook still needs it, the hook deletes it (or, if the outer transaction
        # rolls back, the caller: the upload view releases every staged file it received).
        if not keep_for_commit:
            upload.discard()


def training_file_delete(*, file: TrainingFile) -> None:
    """Soft-delete a file: set ``deleted_at``; its bytes go when no other live row has the same content.

    The row stays because finished jobs reference it (their ``training_file`` keeps answering
    with its id, as OpenAI's does); every owner-facing lookup treats a deleted file as missing.

    Raises:
        ConflictError: 409 ``file_in_use`` while a job that is not finished uses it.
        NotFoundError: 404 when the file was deleted meanwhile (a concurrent delete won).
    """
    with transaction.atomic():
        # Lock the row: a job create locks it too before inserting its job, so either the
        # create sees ``deleted_at`` (404) or we see its job here (409) - never a queued job
        # on a deleted file. (The job's FK insert also takes a key-share lock on this row in PG.)
        locked = TrainingFile.objects.select_for_update().filter(id=file.id, deleted_at__isnull=True).first()
        if locked is None:
            raise NotFoundError(f"No such file: {file.id}.", code="not_found", param="file_id")
        jobs = TuningJob.objects.filter(Q(training_file=locked) | Q(validation_file=locked))
        active = jobs.filter(status__in=NON_TERMINAL).values_list("id", "status").first()
        if active:
            raise ConflictError(
                f"File {file.id} is used by job {active[0]}, which is {active[1]}.",
                code="file_in_use",
                param="file_id",
                suggestion="Cancel the job or wait for it to finish, then delete the file.",
            )
        locked.deleted_at = timezone.now()
        locked.save(update_fields=["deleted_at"])
        file.deleted_at = locked.deleted_at
        # After commit, under the storage lock: an upload of the same content that commits
        # later puts its bytes back itself (_ensure_blob_after_commit).
        transaction.on_commit(partial(_collect_blob, locked.sha256))


def _collect_blob(sha256: str) -> None:
    """After the delete commits: drop the bytes if that was the last row with this content."""
    with _storage_lock():
        _drop_blob_if_unused(sha256)
