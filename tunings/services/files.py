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
from django.db.models import Q, Sum
from django.utils import timezone

from lora_engine.fsio import fsync_dir, is_disk_full_oserror, publish_file
from tuninglab.errors import (
    ConflictError,
    InsufficientStorageError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from tuninglab.services import user_row_lock
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


def disk_full_error() -> InsufficientStorageError:
    """507 ``disk_full``: the server's data directory has no room for the upload."""
    return InsufficientStorageError(
        "The server ran out of disk space while storing the upload; nothing was stored.",
        param="file",
        suggestion="Try again later; if it persists, ask an operator to free space in the data directory "
        "(manage.py cleanup deletes what finished work left behind).",
    )


@contextlib.contextmanager
def _disk_full_as_api_error(on_error: Any) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT, EFBIG) → run ``on_error`` (delete what was written) and raise 507."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full_oserror(exc):
            raise
        on_error()
        raise disk_full_error() from exc


def storage_quota_error(*, used: int, size: int, cap: int) -> PayloadTooLargeError:
    """413 ``storage_quota_exceeded``: the owner's live files plus this upload pass their quota.

    A 413, not a 429: waiting does not free the space (deleting files does), and clients retry 429s.
    """
    mb = 1024 * 1024
    return PayloadTooLargeError(
        f"Storing this upload ({size / mb:.1f} MB) would bring your files to {(used + size) / mb:.1f} MB; "
        f"your storage quota is {cap / mb:g} MB. Nothing was stored.",
        code="storage_quota_exceeded",
        param="file",
        suggestion="Delete files you no longer need (DELETE /v1/files/<id>), or ask an operator to raise "
        "TUNINGLAB_MAX_STORED_MB_PER_USER.",
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
        with _disk_full_as_api_error(self.discard):
            self.file.write(chunk)

    def finish(self) -> StagedUpload:
        """Close the temp file and describe it.

        No fsync here: ``publish_file`` syncs the bytes before renaming them into the store,
        and a temp file that never gets there need not survive a crash.
        """
        with _disk_full_as_api_error(self.discard):
            self.file.close()  # flushes the buffer: a full disk may show only here
        return StagedUpload(path=self.path, sha256=self.hasher.hexdigest(), size=self.size)

    def discard(self) -> None:
        """Close and delete the temp file (any failure path)."""
        with contextlib.suppress(OSError):  # a full disk fails the flush on close; the file goes anyway
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
    with _disk_full_as_api_error(staged.discard):
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


def stored_bytes(*, owner: Any) -> int:
    """Bytes of the owner's live files, as uploaded (a blob shared by two rows counts twice:
    what a user may store must not depend on what others uploaded)."""
    total = TrainingFile.objects.filter(owner=owner, deleted_at__isnull=True).aggregate(total=Sum("bytes"))["total"]
    return int(total or 0)


def _check_storage_quota(*, owner: Any, size: int) -> None:
    cap = int(settings.TUNINGLAB["MAX_STORED_BYTES_PER_USER"])
    used = stored_bytes(owner=owner)
    if used + size > cap:
        raise storage_quota_error(used=used, size=size, cap=cap)


def training_file_create(*, owner: Any, upload: StagedUpload, filename: str, purpose: str) -> TrainingFile:
    """Validate a staged upload and store it: content-addressed bytes + a ``TrainingFile`` row.

    The row carries the dataset stats of this upload (``stats``); rows sharing a blob each hold
    their own copy, so no row's stats depend on another row or on a file next to the bytes.

    Always consumes ``upload``: its temp file is moved into the store or deleted.

    Raises:
        InvalidRequestError: ``invalid_purpose``.
        DatasetValidationError: the dataset has problems (400, every problem in ``details``);
            nothing is stored.
        PayloadTooLargeError: 413 ``storage_quota_exceeded``, the owner's live files would pass
            ``MAX_STORED_BYTES_PER_USER``; nothing is stored.
    """
    keep_for_commit = False
    try:
        if purpose not in PURPOSES:
            raise InvalidRequestError(
                f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}.",
                code="invalid_purpose",
                param="purpose",
            )
        # Before validating (cheap, and spares reading a file we would refuse), and again below
        # under the owner's row lock, where two uploads of one owner cannot both take the last bytes.
        _check_storage_quota(owner=owner, size=upload.size)
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
                    user_row_lock(user_id=owner.pk)
                    _check_storage_quota(owner=owner, size=upload.size)
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


def orphan_upload_files_collect(*, older_than: float, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Delete upload leftovers last modified before ``older_than`` (a Unix time); returns ``(path, bytes)``.

    Two kinds: temp files of uploads a crash interrupted (``tmp/upload-*.part``; a request in
    progress has touched its file recently), and blobs no live row points at (a crash between
    placing the bytes and inserting the row). Blobs are checked and deleted under the storage
    lock, so an upload placing the same content now either keeps its blob or puts it back.
    """
    found: list[tuple[Path, int]] = []
    data = _data_dir()
    for path in sorted((data / "tmp").glob("upload-*.part")):
        size = _old_file_size(path, older_than)
        if size is not None:
            found.append((path, size))
            if not dry_run:
                path.unlink(missing_ok=True)
    if not (data / "files").is_dir():
        return found
    with _storage_lock():
        live = set(TrainingFile.objects.filter(deleted_at__isnull=True).values_list("storage_path", flat=True))
        for path in sorted((data / "files").glob("*/*.jsonl")):
            if path.relative_to(data).as_posix() in live:
                continue
            size = _old_file_size(path, older_than)
            if size is not None:
                found.append((path, size))
                if not dry_run:
                    path.unlink(missing_ok=True)
    return found


def _old_file_size(path: Path, older_than: float) -> int | None:
    """The size of a regular file last modified before ``older_than``, else None."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not path.is_file() or path.is_symlink() or st.st_mtime >= older_than:
        return None
    return st.st_size
