"""``client.chat.completions`` — **server support pending**.

The inference gateway ships in a later server release. ``create`` calls its documented route
(``POST /v1/chat/completions``) already; against a server without it, it raises
:class:`FeatureUnavailableError` instead of a confusing 404 or 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuninglab_sdk._base import NOT_GIVEN, TimeoutTypes
from tuninglab_sdk._errors import APIStatusError, FeatureUnavailableError

if TYPE_CHECKING:
    from tuninglab_sdk._base import AsyncAPIClient, SyncAPIClient

CHAT_PATH = "/v1/chat/completions"


def _is_pending(exc: APIStatusError) -> bool:
    """A missing route: 404 without our JSON error envelope (Django's default page), or 501/503."""
    if exc.status in (501, 503):
        return True
    return exc.status == 404 and not (isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict))


def _pending_error(exc: APIStatusError, feature: str) -> FeatureUnavailableError:
    return FeatureUnavailableError(
        f"{feature} is not available on this server yet (HTTP {exc.status}): server support pending. "
        "Upgrade the server, or check that the inference gateway is enabled.",
        status=exc.status,
        code=exc.code or "feature_unavailable",
        param=exc.param,
        type=exc.type,
        suggestion=exc.suggestion,
        body=exc.body,
        response=exc.response,
    )


def _unavailable(exc: APIStatusError, feature: str) -> FeatureUnavailableError | None:
    """The error to raise instead of ``exc`` when its route is missing; None to re-raise ``exc``."""
    if isinstance(exc, FeatureUnavailableError) or not _is_pending(exc):
        return None
    return _pending_error(exc, feature)


@contextmanager
def _feature(name: str) -> Iterator[None]:
    try:
        yield
    except APIStatusError as exc:
        unavailable = _unavailable(exc, name)
        if unavailable is None:
            raise
        raise unavailable from exc


@asynccontextmanager
async def _afeature(name: str) -> AsyncIterator[None]:
    try:
        yield
    except APIStatusError as exc:
        unavailable = _unavailable(exc, name)
        if unavailable is None:
            raise
        raise unavailable from exc


@dataclass
class ChatCompletion:
    """An OpenAI ``chat.completion``; ``content`` is the first choice's text."""

    id: str
    model: str | None
    choices: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def content(self) -> str | None:
        if not self.choices:
            return None
        return (self.choices[0].get("message") or {}).get("content")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatCompletion:
        return cls(
            id=data.get("id", ""),
            model=data.get("model"),
            choices=list(data.get("choices") or []),
            usage=data.get("usage"),
            raw=data,
        )


def _chat_body(model: str, messages: Sequence[Mapping[str, Any]], stream: bool, extra: dict[str, Any]) -> dict:
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], **extra}
    if stream:
        body["stream"] = True
    return body


class Completions:
    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = False,
        timeout: TimeoutTypes = NOT_GIVEN,
        **params: Any,
    ) -> ChatCompletion | Iterator[dict[str, Any]]:
        """Chat with a base model or an adapter (its public name as ``model``).

        ``stream=True`` returns an iterator of ``chat.completion.chunk`` dicts (not retried).
        Other keyword arguments (``temperature``, ``max_tokens``, ...) are sent as is.
        """
        body = _chat_body(model, messages, stream, params)
        if stream:
            return self._stream(body, timeout)
        with _feature("The inference gateway"):
            return ChatCompletion.from_dict(self._client._request("POST", CHAT_PATH, json=body, timeout=timeout))

    def _stream(self, body: dict[str, Any], timeout: TimeoutTypes) -> Iterator[dict[str, Any]]:
        with _feature("The inference gateway"):
            yield from self._client._stream_sse(CHAT_PATH, json=body, timeout=timeout)


class AsyncCompletions:
    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = False,
        timeout: TimeoutTypes = NOT_GIVEN,
        **params: Any,
    ) -> ChatCompletion | AsyncIterator[dict[str, Any]]:
        body = _chat_body(model, messages, stream, params)
        if stream:
            return self._stream(body, timeout)
        async with _afeature("The inference gateway"):
            body = await self._client._request("POST", CHAT_PATH, json=body, timeout=timeout)
        return ChatCompletion.from_dict(body)

    async def _stream(self, body: dict[str, Any], timeout: TimeoutTypes) -> AsyncIterator[dict[str, Any]]:
        async with _afeature("The inference gateway"):
            async for chunk in self._client._stream_sse(CHAT_PATH, json=body, timeout=timeout):
                yield chunk


class Chat:
    def __init__(self, client: SyncAPIClient) -> None:
        self.completions = Completions(client)


class AsyncChat:
    def __init__(self, client: AsyncAPIClient) -> None:
        self.completions = AsyncCompletions(client)
