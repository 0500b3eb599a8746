"""HTTP plumbing shared by :class:`TuningLab` and :class:`AsyncTuningLab`: configuration,
headers, the retry loop and error mapping. Resources call ``_request``; nothing else
talks to httpx.
"""

from __future__ import annotations

import asyncio
import json as json_module
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import httpx

from tuninglab_sdk._errors import APIConnectionError, APITimeoutError, TuningLabError, make_status_error
from tuninglab_sdk._retry import retry_delay, should_retry_response
from tuninglab_sdk._version import __version__

if TYPE_CHECKING:
    # typing.Unpack is 3.11+, the SDK supports 3.10: annotations are strings, so checkers only.
    from typing_extensions import Unpack

log = logging.getLogger("tuninglab_sdk")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 3


_DONE: Any = object()


def _sse_data(line: str) -> Any:
    """The JSON of one ``data:`` line; ``_DONE`` for ``data: [DONE]``; None for other lines."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return _DONE
    if not data:
        return None
    return json_module.loads(data)


class _NotGiven:
    """Sentinel for "argument not passed" (``None`` means "no timeout")."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()

TimeoutTypes = float | httpx.Timeout | None
# A factory, not a dict: a retry must re-open (or rewind) the upload, not resend a drained stream.
FilesFactory = Callable[[], Mapping[str, Any]]


class RequestOptions(TypedDict, total=False):
    """The keyword options of ``_request`` (sync and async alike); defaults in ``_BaseClient._prepare``."""

    params: Mapping[str, Any] | None
    json: Any
    files: FilesFactory | None
    data: Mapping[str, Any] | None
    timeout: TimeoutTypes | _NotGiven
    idempotency_key: str | None
    max_retries: int | None
    text: bool


def _normalise_base_url(base_url: str) -> str:
    """Accept ``http://host:8000``, ``.../`` and ``.../v1`` alike; paths carry ``/v1`` themselves."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def _as_timeout(timeout: TimeoutTypes) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout)


def _connection_error(exc: httpx.TransportError) -> APIConnectionError:
    """The SDK error for a request that got no HTTP answer (a timeout is its own subclass)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request=getattr(exc, "_request", None))
    return APIConnectionError(f"Connection error: {exc}", request=getattr(exc, "_request", None))


class _BaseClient:
    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: TimeoutTypes | _NotGiven,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        base_url = base_url or os.environ.get("TUNINGLAB_BASE_URL") or DEFAULT_BASE_URL
        api_key = api_key if api_key is not None else os.environ.get("TUNINGLAB_API_KEY")
        if not api_key:
            raise TuningLabError("No API key: pass api_key=... or set TUNINGLAB_API_KEY.")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = _normalise_base_url(base_url)
        self.api_key = api_key
        self.timeout = DEFAULT_TIMEOUT if isinstance(timeout, _NotGiven) else _as_timeout(timeout)
        self.max_retries = max_retries
        self._default_headers = dict(default_headers or {})

    def _headers(self, method: str, idempotency_key: str | None, accept: str = "application/json") -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": accept,
            "User-Agent": f"tuninglab-sdk/{__version__} python-httpx/{httpx.__version__}",
            **self._default_headers,
        }
        if method == "POST":
            # One key per *logical* request, reused by every retry of it: if the first
            # attempt reached the server but its answer was lost, the retry is replayed
            # from the server's idempotency record instead of creating a second job.
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        return headers

    def _timeout_for(self, timeout: TimeoutTypes | _NotGiven) -> httpx.Timeout:
        return self.timeout if isinstance(timeout, _NotGiven) else _as_timeout(timeout)

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    @staticmethod
    def _decode(response: httpx.Response, text: bool = False) -> Any:
        if text:
            return response.text
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TuningLabError(
                f"Expected JSON from {response.request.method} {response.request.url}, got "
                f"{response.headers.get('content-type', 'no content type')}."
            ) from exc

    def _prepare(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: FilesFactory | None = None,
        data: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | _NotGiven = NOT_GIVEN,
        idempotency_key: str | None = None,
        max_retries: int | None = None,
        text: bool = False,
    ) -> tuple[int, Callable[[], dict[str, Any]]]:
        """Build one logical request: its retry budget and a factory of ``httpx`` request kwargs.

        The headers (so the Idempotency-Key) are fixed once and shared by every attempt; the
        factory re-runs ``files`` so each attempt sends the upload from its start. ``text``
        asks for a text answer (a Markdown report); errors still come as JSON.
        """
        accept = "text/markdown, text/plain;q=0.9, application/json;q=0.5" if text else "application/json"
        headers = self._headers(method, idempotency_key, accept)
        retries = self.max_retries if max_retries is None else max_retries
        params = {k: v for k, v in (params or {}).items() if v is not None}

        def attempt_kwargs() -> dict[str, Any]:
            return {
                "method": method,
                "url": self._url(path),
                "params": params or None,
                "json": json,
                "files": files() if files else None,
                "data": data,
                "headers": headers,
                "timeout": self._timeout_for(timeout),
            }

        return retries, attempt_kwargs

    def _transport_retry_delay(
        self, exc: httpx.TransportError, attempt: int, retries: int, method: str, path: str
    ) -> float:
        """Seconds to wait before retrying after ``exc``; raises the SDK error when out of retries.

        Called from the ``except`` block of an attempt, so the raised error chains ``exc``.
        """
        if isinstance(exc, httpx.UnsupportedProtocol):
            raise APIConnectionError(f"Bad base URL {self.base_url!r}: {exc}") from exc
        if attempt < retries:
            delay = retry_delay(attempt, None)
            log.info("%s %s: %s; retrying in %.2fs", method, path, type(exc).__name__, delay)
            return delay or 0.0
        raise _connection_error(exc) from exc

    @staticmethod
    def _status_retry_delay(
        response: httpx.Response, attempt: int, retries: int, method: str, path: str
    ) -> float | None:
        """Seconds to wait before retrying a failed answer; None when it is final (raise it)."""
        if attempt < retries and should_retry_response(response):
            delay = retry_delay(attempt, response)
            if delay is not None:
                log.info("%s %s: HTTP %s; retrying in %.2fs", method, path, response.status_code, delay)
            return delay
        return None

    def _sse_headers(self) -> dict[str, str]:
        # JSON too: an error (a 404, a 503 while vLLM starts) is a JSON body, and a server that
        # negotiates content (DRF) answers 406 to a request that accepts only the event stream.
        return {**self._headers("POST", None), "Accept": "text/event-stream, application/json;q=0.9"}


class SyncAPIClient(_BaseClient):
    """Blocking transport with retries. ``http_client`` lets you pass proxies, TLS settings or a
    ``httpx.MockTransport``; ``sleep`` is a hook for tests (defaults to ``time.sleep``)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes | _NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(follow_redirects=True)
        self._sleep = sleep or time.sleep
        # Waiting between polls (wait_for_completion, events follow) is real time, separate
        # from the retry backoff hook so a test can fake one without busy-looping the other.
        self._poll_sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        """Close the connection pool (only when the client created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SyncAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """Send one logical request, retrying per :mod:`tuninglab_sdk._retry`; return the decoded JSON."""
        retries, attempt_kwargs = self._prepare(method, path, **options)
        for attempt in range(retries + 1):
            try:
                response = self._http.request(**attempt_kwargs())
            except httpx.TransportError as exc:
                self._sleep(self._transport_retry_delay(exc, attempt, retries, method, path))
                continue
            if response.is_success:
                return self._decode(response, options.get("text", False))
            delay = self._status_retry_delay(response, attempt, retries, method, path)
            if delay is None:
                raise make_status_error(response)
            response.close()
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream_sse(
        self, path: str, *, json: Any, timeout: TimeoutTypes | _NotGiven = NOT_GIVEN
    ) -> Iterator[dict[str, Any]]:
        """POST and yield each ``data:`` JSON of a server-sent-events answer until ``[DONE]``.

        Retried like ``_request`` until the stream starts (a connection error, or an error
        status such as 503 while vLLM starts: no token was sent yet); never after, since a
        resend would duplicate the tokens already yielded.
        """
        headers = self._sse_headers()  # one Idempotency-Key for every attempt, as in _request
        retries = self.max_retries
        for attempt in range(retries + 1):
            started = False
            try:
                with self._http.stream(
                    "POST", self._url(path), json=json, headers=headers, timeout=self._timeout_for(timeout)
                ) as response:
                    if response.is_success:
                        started = True
                        for line in response.iter_lines():
                            payload = _sse_data(line)
                            if payload is _DONE:
                                return
                            if payload is not None:
                                yield payload
                        return
                    response.read()
                    delay = self._status_retry_delay(response, attempt, retries, "POST", path)
                    if delay is None:
                        raise make_status_error(response)
            except httpx.TransportError as exc:
                if started:
                    raise _connection_error(exc) from exc
                delay = self._transport_retry_delay(exc, attempt, retries, "POST", path)
            self._sleep(delay)


class AsyncAPIClient(_BaseClient):
    """The asyncio twin of :class:`SyncAPIClient` (``sleep`` defaults to ``asyncio.sleep``)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutTypes | _NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(follow_redirects=True)
        self._sleep = sleep or asyncio.sleep
        self._poll_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncAPIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(
        self,
        method: str,
        path: str,
        **options: Unpack[RequestOptions],
    ) -> Any:
        retries, attempt_kwargs = self._prepare(method, path, **options)
        for attempt in range(retries + 1):
            try:
                response = await self._http.request(**attempt_kwargs())
            except httpx.TransportError as exc:
                await self._sleep(self._transport_retry_delay(exc, attempt, retries, method, path))
                continue
            if response.is_success:
                return self._decode(response, options.get("text", False))
            delay = self._status_retry_delay(response, attempt, retries, method, path)
            if delay is None:
                raise make_status_error(response)
            await response.aclose()
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream_sse(
        self, path: str, *, json: Any, timeout: TimeoutTypes | _NotGiven = NOT_GIVEN
    ) -> AsyncIterator[dict[str, Any]]:
        headers = self._sse_headers()
        retries = self.max_retries
        for attempt in range(retries + 1):
            started = False
            try:
                async with self._http.stream(
                    "POST", self._url(path), json=json, headers=headers, timeout=self._timeout_for(timeout)
                ) as response:
                    if response.is_success:
                        started = True
                        async for line in response.aiter_lines():
                            payload = _sse_data(line)
                            if payload is _DONE:
                                return
                            if payload is not None:
                                yield payload
                        return
                    await response.aread()
                    delay = self._status_retry_delay(response, attempt, retries, "POST", path)
                    if delay is None:
                        raise make_status_error(response)
            except httpx.TransportError as exc:
                if started:
                    raise _connection_error(exc) from exc
                delay = self._transport_retry_delay(exc, attempt, retries, "POST", path)
            await self._sleep(delay)
