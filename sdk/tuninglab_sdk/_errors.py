"""Typed errors. Every HTTP error body ``{"error": {message, type, param, code, suggestion?}}``
becomes an :class:`APIStatusError` subclass chosen by status code, so callers can write
``except NotFoundError`` instead of comparing numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuninglab_sdk._retry import parse_retry_after

if TYPE_CHECKING:
    import httpx

    from tuninglab_sdk.types import TuningJob

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "ConflictError",
    "FeatureUnavailableError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "TuningCancelled",
    "TuningFailed",
    "TuningLabError",
    "ValidationError",
    "WaitTimeoutError",
]


class TuningLabError(Exception):
    """Base class of every error the SDK raises on purpose."""


class APIConnectionError(TuningLabError):
    """The request never got an HTTP answer (refused, reset, DNS, dropped connection).

    Raised only after the retries are spent; ``__cause__`` holds the httpx error.
    """

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APITimeoutError(APIConnectionError):
    """The server did not answer within the timeout (after the retries)."""

    def __init__(self, message: str = "Request timed out.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APIStatusError(TuningLabError):
    """The server answered with a 4xx/5xx status.

    Attributes:
        status: HTTP status code.
        message: the server's ``error.message`` (or the raw body when it is not JSON).
        code: stable machine-readable ``error.code`` (e.g. ``invalid_state``), or None.
        param: the request field the error is about (e.g. ``training_file``), or None.
        type: ``error.type`` (``invalid_request_error``, ``server_error``, ...), or None.
        suggestion: a hint for fixing it, when the server has one.
        body: the decoded JSON body (or the text), for anything else.
        response: the ``httpx.Response``.
    """

    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        suggestion: str | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.type = type
        self.suggestion = suggestion
        self.body = body
        self.response = response

    @property
    def status_code(self) -> int:
        """Alias of ``status`` (the name httpx and openai use)."""
        return self.status

    @property
    def request_id(self) -> str | None:
        if self.response is None:
            return None
        return self.response.headers.get("x-request-id")

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait before trying again (``Retry-After``), or None.

        Set on 429 and 503 answers, e.g. ``inference_unavailable`` while vLLM starts: the SDK
        already waited that long between its retries; a caller that wants to keep waiting
        after they are spent sleeps this long before its next call.
        """
        if self.response is None:
            return None
        return parse_retry_after(self.response.headers)

    def __str__(self) -> str:
        parts = [f"{self.status}"]
        if self.code:
            parts.append(self.code)
        text = f"[{' '.join(parts)}] {self.message}"
        if self.param:
            text += f" (param: {self.param})"
        if self.suggestion:
            text += f" Suggestion: {self.suggestion}"
        return text


class ValidationError(APIStatusError):
    """400 or 422: the request is invalid; ``param`` names the offending field."""


class AuthenticationError(APIStatusError):
    """401: missing, invalid or revoked API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but may not do this."""


class NotFoundError(APIStatusError):
    """404: no such object for this key (other owners' objects are 404 too)."""


class ConflictError(APIStatusError):
    """409: the object's state forbids the operation (e.g. cancel a finished job)."""


class RateLimitError(APIStatusError):
    """429: too many requests (the gateway: ``too_many_concurrent_requests``); the SDK
    already waited ``Retry-After`` and retried."""


class InternalServerError(APIStatusError):
    """5xx: the server failed; retried with backoff (or its ``Retry-After``) before this is raised.

    The inference gateway's codes: ``inference_unavailable`` (503, vLLM starting or down:
    transient, see ``retry_after``), ``upstream_timeout`` (504), ``upstream_error`` (502).
    """


class FeatureUnavailableError(APIStatusError):
    """The server has no such route: a 404 without the API's JSON error body (the web
    framework's own page), or a 501. Raised by ``chat.completions`` against a server older
    than its inference gateway, or behind a proxy that does not forward the route.

    Not a 503: the gateway answers ``inference_unavailable`` (503 with ``Retry-After``) while
    vLLM starts or restarts; that is retried, then raised as :class:`InternalServerError`.
    """


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def error_class_for_status(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP status (unknown 4xx → APIStatusError)."""
    if status >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status, APIStatusError)


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Build the typed error for a non-2xx response from its body."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, dict):
        message = str(envelope.get("message") or f"HTTP {response.status_code}")
        fields = {
            "code": envelope.get("code"),
            "param": envelope.get("param"),
            "type": envelope.get("type"),
            "suggestion": envelope.get("suggestion") or None,
        }
    else:
        text = body if isinstance(body, str) else str(body)
        message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if text and len(text) < 300 and "<" not in text:
            message += f": {text.strip()}"
        fields = {"code": None, "param": None, "type": None, "suggestion": None}
    cls = error_class_for_status(response.status_code)
    return cls(message, status=response.status_code, body=body, response=response, **fields)


class _JobOutcomeError(TuningLabError):
    """A tuning job ended without succeeding; carries the job."""

    def __init__(self, message: str, *, job: TuningJob) -> None:
        super().__init__(message)
        self.message = message
        self.job = job

    @property
    def job_id(self) -> str:
        return self.job.id


class TuningFailed(_JobOutcomeError):
    """The job ended ``failed``. ``code``, ``message``, ``param`` and ``suggestion`` come
    from the job's ``error`` (e.g. ``out_of_memory`` → "lower batch_size or rank ...")."""

    def __init__(self, job: TuningJob) -> None:
        error = job.error
        code = error.code if error else None
        message = (error.message if error else None) or "The tuning job failed."
        super().__init__(message, job=job)
        self.code = code
        self.param = error.param if error else None
        self.suggestion = error.suggestion if error else None

    def __str__(self) -> str:
        text = f"Tuning job {self.job.id} failed"
        if self.code:
            text += f" [{self.code}]"
        text += f": {self.message}"
        if self.param:
            text += f" (param: {self.param})"
        if self.suggestion:
            text += f" Suggestion: {self.suggestion}"
        return text


class TuningCancelled(_JobOutcomeError):
    """The job ended ``cancelled``.

    A sibling of :class:`TuningFailed`, not a subclass: a cancel is usually deliberate
    (someone ran ``tunings cancel``), so ``except TuningFailed`` handlers written for
    training errors do not swallow it. Catch both with ``except (TuningFailed, TuningCancelled)``.
    """

    def __init__(self, job: TuningJob) -> None:
        super().__init__(f"Tuning job {job.id} was cancelled.", job=job)


class WaitTimeoutError(TuningLabError, TimeoutError):
    """``wait_for_completion`` gave up waiting. The job was *not* cancelled and keeps running;
    ``job`` is its last seen state. A subclass of the built-in ``TimeoutError``."""

    def __init__(self, message: str, *, job: TuningJob) -> None:
        super().__init__(message)
        self.message = message
        self.job = job
