"""``/v1/files`` endpoints (OpenAI shape): thin views over ``tunings.services.files`` and
``tunings.selectors.files``.

Uploads come two ways, multipart/form-data (``file``, ``purpose``) or the JSONL as the raw body
(purpose from ``?purpose=``, default ``fine-tune``); ``tunings.apis.uploads`` streams either to
DATA_DIR/tmp, hashed and capped, so the upload view finds a ``StagedUploadedFile`` in
``request.FILES["file"]`` and only has to store it.
"""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tuninglab.errors import InvalidRequestError, ServiceUnavailableError
from tuninglab.idempotency import idempotent
from tuninglab.pagination import list_response, paginate
from tunings.apis.uploads import (
    NdjsonUploadParser,
    OctetStreamUploadParser,
    RawUploadParser,
    StagedUploadedFile,
    StagingUploadHandler,
    max_upload_bytes,
)
from tunings.selectors.files import training_file_get, training_file_list, training_file_path
from tunings.serializers.files import file_deleted_to_dict, file_to_dict
from tunings.services.files import training_file_create, training_file_delete

_FILE_OBJECT = OpenApiTypes.OBJECT  # see docs/datasets.md for the file object's fields
_UPLOAD_BODY = {
    "multipart/form-data": {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}},
        "required": ["file"],
    },
    "application/jsonl": OpenApiTypes.BINARY,
    "application/octet-stream": OpenApiTypes.BINARY,
}
_PAGE_PARAMS = [OpenApiParameter("after", str), OpenApiParameter("limit", int)]


def _list(request: Request) -> Response:
    files, has_more = paginate(training_file_list(owner=request.user), request)
    return Response(list_response([file_to_dict(f) for f in files], has_more))


class FileCollectionApi(APIView):
    """``GET /v1/files`` lists the caller's files; ``POST /v1/files`` uploads one (200, OpenAI)."""

    parser_classes = [MultiPartParser, RawUploadParser, NdjsonUploadParser, OctetStreamUploadParser]

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.staged_uploads: list[StagedUploadedFile] = []
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            # Whatever happened (413, 400, replayed idempotent answer, a crash), no temp file
            # outlives the request: a stored upload was moved into the store already.
            for upload in self.staged_uploads:
                upload.release()

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        # Before DRF may parse the body (a session-authenticated request's CSRF check reads
        # request.POST), so multipart uploads are streamed by our capped handler.
        if not hasattr(self, "staged_uploads"):  # schema generation calls this without dispatch()
            self.staged_uploads = []
        request.upload_handlers = [
            StagingUploadHandler(request, max_bytes=max_upload_bytes(), registry=self.staged_uploads)
        ]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(operation_id="files_list", parameters=_PAGE_PARAMS, responses=_FILE_OBJECT)
    def get(self, request: Request) -> Response:
        return _list(request)

    @extend_schema(
        operation_id="files_create",
        request=_UPLOAD_BODY,
        parameters=[OpenApiParameter("filename", str), OpenApiParameter("purpose", str)],
        responses=_FILE_OBJECT,
    )
    @idempotent
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("file")
        if not isinstance(upload, StagedUploadedFile):
            raise InvalidRequestError(
                "No file in the request: send multipart/form-data with a 'file' field, "
                "or the JSONL itself as the body with Content-Type: application/jsonl.",
                code="missing_file",
                param="file",
            )
        purpose = request.data.get("purpose") or request.query_params.get("purpose") or "fine-tune"
        file = training_file_create(owner=request.user, upload=upload.staged, filename=upload.name, purpose=purpose)
        return Response(file_to_dict(file), status=200)


class FileDetailApi(APIView):
    """``GET /v1/files/{id}`` retrieves, ``DELETE`` deletes (409 while a job uses the file)."""

    @extend_schema(operation_id="files_retrieve", responses=_FILE_OBJECT)
    def get(self, request: Request, file_id: str) -> Response:
        return Response(file_to_dict(training_file_get(owner=request.user, file_id=file_id)))

    @extend_schema(operation_id="files_delete", responses={200: _FILE_OBJECT})
    def delete(self, request: Request, file_id: str) -> Response:
        file = training_file_get(owner=request.user, file_id=file_id)
        training_file_delete(file=file)
        return Response(file_deleted_to_dict(file_id))


class _AnyAcceptNegotiation(DefaultContentNegotiation):
    """The download is raw bytes whatever the client accepts (the openai package sends
    ``Accept: application/binary``); only an error body is rendered, as JSON."""

    def select_renderer(self, request: Any, renderers: Any, format_suffix: str | None = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


class FileContentApi(APIView):
    """``GET /v1/files/{id}/content``: the bytes as uploaded (owner only)."""

    content_negotiation_class = _AnyAcceptNegotiation

    @extend_schema(operation_id="files_content", responses={(200, "application/jsonl"): OpenApiTypes.BINARY})
    def get(self, request: Request, file_id: str) -> FileResponse:
        file = training_file_get(owner=request.user, file_id=file_id)
        try:
            handle = open(training_file_path(file=file), "rb")  # noqa: SIM115 - FileResponse closes it
        except FileNotFoundError:
            raise ServiceUnavailableError(
                f"The content of file {file_id} is missing from storage.",
                code="file_content_missing",
                status=500,
            ) from None
        return FileResponse(handle, as_attachment=True, filename=file.filename, content_type="application/jsonl")
