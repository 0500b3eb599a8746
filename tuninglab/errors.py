"""One error shape for the whole HTTP API, and the domain errors services raise.

Every error body is ``{"error": {"message", "type", "param", "code"}}`` (+ ``suggestion``
when we have one), the shape the official ``openai`` package maps to its exceptions.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApiError(Exception):
    """A domain error with a stable ``code``; rendered as the API error body."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        suggestion: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})  # e.g. Retry-After on a 503
        self.code = code or self.default_code
        self.param = param
        self.suggestion = suggestion
        if status is not None:
            self.status = status

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.suggestion:
            body["suggestion"] = self.suggestion
        return body


class InvalidRequestError(ApiError):
    status = 400


class NotFoundError(ApiError):
    status = 404
    default_code = "not_found"


class ConflictError(ApiError):
    """The object is in a state that does not allow the operation (e.g. cancel a finished job)."""

    status = 409
    default_code = "invalid_state"


class IdempotencyError(ApiError):
    status = 422
    default_code = "idempotency_key_reused"


class PayloadTooLargeError(ApiError):
    status = 413
    default_code = "file_too_large"


class TooManyRequestsError(ApiError):
    """A per-owner quota is used up (e.g. queued jobs); it frees up as the owner's work finishes."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class InternalServerError(ApiError):
    """An uncaught exception, as API clients see it: no details (they go to the log)."""

    status = 500
    type = "server_error"
    default_code = "internal_error"


class InsufficientStorageError(ApiError):
    """The server's disk (or a quota on it) is full: nothing was stored; an operator must free space."""

    status = 507
    type = "server_error"
    default_code = "disk_full"


class ServiceUnavailableError(ApiError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


# Seconds a client is told to wait when the database is unreachable: a dropped connection is
# replaced on the next request, a restarting server takes a few seconds.
DATABASE_RETRY_AFTER_SECONDS = 5

_DRF_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def _error_response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    response = Response({"error": body}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str, str]:
    """Walk DRF's nested error detail to the first leaf: (param, message, code)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key) if key != "non_field_errors" else ""
            param = f"{prefix}.{name}" if prefix and name else (name or prefix)
            return _first_validation_error(value, param)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    code = getattr(detail, "code", None) or "invalid"
    return (
        (prefix or None),
        str(detail),
        f"invalid_{code}" if code in {"invalid", "required", "null", "blank"} else str(code),
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: render every error in the one shape."""
    if isinstance(exc, ApiError):
        return _error_response(exc.as_dict(), exc.status, exc.headers)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The server restarted, an operator killed our connection, or it is down: transient, not a
        # bug, so a 503 the client retries instead of a 500. Django closes the broken connection at
        # the end of this request (``close_if_unusable_or_obsolete``) and the next one reconnects.
        # Other database errors (IntegrityError, DataError) are bugs and stay 500s.
        return _error_response(
            ServiceUnavailableError(
                "The database is unavailable; retry shortly (a create: with the same Idempotency-Key).",
                code="database_unavailable",
            ).as_dict(),
            503,
            {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    headers = {k: v for k, v in response.items() if k in {"Retry-After", "WWW-Authenticate", "Allow"}}
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message, code = _first_validation_error(exc.detail)
        body = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        return _error_response(body, 400, headers)
    detail = getattr(exc, "detail", str(exc))
    code = getattr(detail, "code", None) or "error"
    body = {
        "message": str(detail),
        "type": _DRF_TYPES.get(response.status_code, "invalid_request_error"),
        "param": None,
        "code": str(code),
    }
    if isinstance(exc, drf_exceptions.Throttled):
        body["code"] = "rate_limit_exceeded"
    return _error_response(body, response.status_code, headers)
