"""A guard before every view: a NUL character in the path, query string or form body is a 400.

PostgreSQL text and jsonb columns cannot hold NUL (U+0000), so a lookup or a write that carries
one fails in the driver and becomes a 500, wherever a view or selector did not think of it (a
cursor in ``?after=``, a filter in ``?model=``, an alias in the URL). No id, name, cursor or
field of this API holds a NUL, so refusing it at the door is exact, not a heuristic. JSON bodies
are checked where they are parsed (``tuninglab.parsers``); file uploads are validated as datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from tuninglab.errors import InvalidRequestError

NUL = "\x00"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


def _nul_in(values: Any) -> bool:
    return any(NUL in key or any(NUL in value for value in values.getlist(key)) for key in values)


class RejectNulMiddleware:
    """Answer 400 ``invalid_character`` in the API's error shape before any view runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = self._where_nul(request)
        if where is None:
            return self.get_response(request)
        error = InvalidRequestError(
            f"The request {where} contains a NUL character (U+0000), which no field of this API accepts.",
            code="invalid_character",
            param=where,
        )
        return JsonResponse({"error": error.as_dict()}, status=400)

    @staticmethod
    def _where_nul(request: HttpRequest) -> str | None:
        if NUL in request.path:
            return "path"
        if _nul_in(request.GET):
            return "query"
        # A form body is read into memory by Django anyway (capped by DATA_UPLOAD_MAX_MEMORY_SIZE);
        # multipart uploads stream to disk and are left to the upload view.
        if request.content_type == FORM_MEDIA_TYPE and _nul_in(request.POST):
            return "body"
        return None
