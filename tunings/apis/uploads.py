"""Request bytes -> a staged upload: Django's upload-handler and DRF's parser hooks for ``POST /v1/files``.

Both upload shapes end as a ``StagedUploadedFile`` in ``request.FILES["file"]`` before the view
body runs, its bytes already in ``DATA_DIR/tmp``, hashed and counted against the size cap:

- multipart/form-data: ``StagingUploadHandler`` replaces Django's memory/temp-file handlers;
- a raw body (``application/jsonl``, ``application/x-ndjson``, ``application/octet-stream``):
  ``RawUploadParser`` and its subclasses stream it; the name comes from ``?filename=`` or
  ``Content-Disposition``.

Neither touches ``request.body`` (capped at DATA_UPLOAD_MAX_MEMORY_SIZE and held in memory).
The staging itself (temp file, hash, cap) is ``tunings.services.files.UploadStager``; this
module only adapts it to the request machinery. Every staged file is appended to a list the
view owns, so the view can release leftovers whatever happens.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from django.utils.http import parse_header_parameters
from rest_framework.parsers import BaseParser, DataAndFiles

from tunings.services.files import (
    DEFAULT_FILENAME,
    StagedUpload,
    UploadStager,
    file_too_large_error,
    upload_stage_stream,
)

# A multipart body is the file plus boundaries and headers; the up-front Content-Length
# check allows this much on top of the cap, the byte count while streaming is exact.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def max_upload_bytes() -> int:
    """The upload size cap from settings (``TUNINGLAB_MAX_UPLOAD_MB``), read per request."""
    return int(settings.TUNINGLAB["MAX_UPLOAD_BYTES"])


class StagedUploadedFile(UploadedFile):
    """An uploaded file already staged under DATA_DIR/tmp; ``staged`` carries path, hash and size."""

    def __init__(self, staged: StagedUpload, name: str, content_type: str | None = None) -> None:
        # Opened for reading so UploadedFile.chunks() works (the idempotency fingerprint reads it).
        super().__init__(
            file=open(staged.path, "rb"),  # noqa: SIM115 - closed by release()
            name=name,
            content_type=content_type,
            size=staged.size,
        )
        self.staged = staged

    def release(self) -> None:
        """Close the handle and delete the temp file if the store did not take it."""
        self.file.close()
        self.staged.discard()


class StagingUploadHandler(FileUploadHandler):
    """Multipart upload handler: the ``file`` field goes straight to DATA_DIR/tmp, capped.

    Replaces Django's memory/temp-file handlers for the upload view. Above the cap it deletes
    its temp file and raises ``PayloadTooLargeError``, which stops the multipart parser at once:
    the rest of the body is never read (Django's ``StopUpload`` would swallow the reason).
    Every staged file is appended to ``registry`` so the view can release leftovers.
    """

    def __init__(self, request: Any, *, max_bytes: int, registry: list[StagedUploadedFile]) -> None:
        super().__init__(request)
        self.max_bytes = max_bytes
        self.registry = registry
        self.stager: UploadStager | None = None
        self.got_file = False

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: str | None = None
    ) -> None:
        if content_length and content_length > self.max_bytes + MULTIPART_OVERHEAD_BYTES:
            raise file_too_large_error(self.max_bytes)

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        if field_name != "file" or self.got_file:
            raise SkipFile()  # only one "file" part is read; others are skipped unread
        super().new_file(field_name, file_name, *args, **kwargs)
        self.stager = UploadStager(self.max_bytes)
        self.file = self.stager.file  # Django closes handler.file on an interrupted upload

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self.stager is not None
        self.stager.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> StagedUploadedFile | None:
        if self.stager is None:
            return None
        staged = self.stager.finish()
        self.stager = None
        self.got_file = True
        upload = StagedUploadedFile(staged, name=self.file_name, content_type=self.content_type)
        self.registry.append(upload)
        return upload

    def upload_interrupted(self) -> None:
        if self.stager is not None:
            self.stager.discard()
            self.stager = None


def _raw_filename(request: Any) -> str:
    """``?filename=`` first, then ``Content-Disposition: attachment; filename="..."``."""
    name = request.query_params.get("filename")
    if name:
        return name
    disposition = request.META.get("HTTP_CONTENT_DISPOSITION", "")
    if disposition:
        _, params = parse_header_parameters(disposition)
        if params.get("filename"):
            return params["filename"]
    return DEFAULT_FILENAME


class RawUploadParser(BaseParser):
    """A raw JSONL body → ``FILES["file"]``, streamed to DATA_DIR/tmp with the size cap.

    The view must have a ``staged_uploads`` list; the staged file is appended to it.
    """

    media_type = "application/jsonl"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> DataAndFiles:
        request = parser_context["request"]
        view = parser_context["view"]
        try:
            content_length: int | None = int(request.META.get("CONTENT_LENGTH") or "")
        except ValueError:
            content_length = None
        staged = upload_stage_stream(stream=stream, max_bytes=max_upload_bytes(), content_length=content_length)
        upload = StagedUploadedFile(staged, name=_raw_filename(request), content_type=media_type)
        view.staged_uploads.append(upload)
        # A QueryDict (not a dict) so request.data merges the file as a list, as for multipart:
        # the idempotency fingerprint then hashes the file content, not just its name.
        return DataAndFiles(QueryDict(""), MultiValueDict({"file": [upload]}))


class NdjsonUploadParser(RawUploadParser):
    media_type = "application/x-ndjson"


class OctetStreamUploadParser(RawUploadParser):
    media_type = "application/octet-stream"
