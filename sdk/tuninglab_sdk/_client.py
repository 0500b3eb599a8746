"""The two entry points: :class:`TuningLab` (blocking) and :class:`AsyncTuningLab` (asyncio)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import httpx

from tuninglab_sdk._base import (
    DEFAULT_MAX_RETRIES,
    NOT_GIVEN,
    AsyncAPIClient,
    SyncAPIClient,
    TimeoutTypes,
    _NotGiven,
)
from tuninglab_sdk.resources.chat import AsyncChat, Chat
from tuninglab_sdk.resources.files import AsyncFiles, Files
from tuninglab_sdk.resources.models import AsyncModels, Models
from tuninglab_sdk.resources.tunings import AsyncTunings, Tunings


class TuningLab(SyncAPIClient):
    """Blocking client.

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted);
            default ``$TUNINGLAB_BASE_URL``, then ``http://127.0.0.1:8000``.
        api_key: ``tl-...`` key; default ``$TUNINGLAB_API_KEY``.
        timeout: per-request timeout in seconds (or an ``httpx.Timeout``); default 60 s
            (10 s to connect). Every method also takes ``timeout=``.
        max_retries: retries after the first attempt (default 3) on connection errors,
            timeouts, 408, 429, 5xx and in-flight idempotency conflicts.
        default_headers: extra headers on every request.
        http_client: your own ``httpx.Client`` (proxies, TLS, a mock transport).
        sleep: the function used to wait between retries (test hook).

    Example:
        >>> client = TuningLab()
        >>> job = client.tunings.create(model="tiny-llama", data="train.jsonl")
        >>> job = client.tunings.wait_for_completion(job.id)
    """

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
            http_client=http_client,
            sleep=sleep,
        )
        self.files = Files(self)
        self.tunings = Tunings(self, self.files)
        self.models = Models(self, self.files)
        self.chat = Chat(self)

    def __enter__(self) -> TuningLab:
        return self


class AsyncTuningLab(AsyncAPIClient):
    """asyncio client with the same surface as :class:`TuningLab` (methods are coroutines;
    ``list``/``events`` return async iterators). Use it inside an event loop — a web
    service, or many jobs watched concurrently with ``asyncio.gather``."""

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
            http_client=http_client,
            sleep=sleep,
        )
        self.files = AsyncFiles(self)
        self.tunings = AsyncTunings(self, self.files)
        self.models = AsyncModels(self, self.files)
        self.chat = AsyncChat(self)

    async def __aenter__(self) -> AsyncTuningLab:
        return self
