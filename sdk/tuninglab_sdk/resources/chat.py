"""``client.chat.completions``: OpenAI chat completions through the server's inference gateway.

``model`` is any name the gateway resolves for your key: a base model, your registered model
(its route, else its ``production`` alias, else its latest version), ``name@v3``,
``name@<alias>`` or an ``ft:`` id. The gateway's errors arrive as the SDK's typed errors with
its ``code``, ``message`` and ``suggestion``: ``NotFoundError`` ``model_not_found`` (the
suggestion lists the names you can use), ``ValidationError`` ``model_not_served`` /
``context_length_exceeded`` / ``unsupported_parameter``, and ``InternalServerError``
``inference_unavailable`` (503 while vLLM starts or restarts), which the client's retry loop
waits out first, honouring the gateway's ``Retry-After``.

A server whose answer shows it has no such route at all (an older release) raises
:class:`FeatureUnavailableError` instead of a bare 404.
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
GATEWAY = "The inference gateway"


def _route_missing(exc: APIStatusError) -> bool:
    """A 404 without the API's JSON error envelope (the framework's page), or a 501.

    Every answer of the gateway itself, a 404 ``model_not_found`` included, carries the
    envelope and is raised as it is.
    """
    if exc.status == 501:
        return True
    return exc.status == 404 and not (isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict))


def _unavailable(exc: APIStatusError, feature: str) -> FeatureUnavailableError | None:
    """The error to raise instead of ``exc`` when the server has no such route; None to re-raise ``exc``."""
    if isinstance(exc, FeatureUnavailableError) or not _route_missing(exc):
        return None
    return FeatureUnavailableError(
        f"{feature} is not on this server (HTTP {exc.status}): the server predates it, or a proxy "
        "in front of it does not forward the route.",
        status=exc.status,
        code=exc.code or "feature_unavailable",
        param=exc.param,
        type=exc.type,
        suggestion=exc.suggestion or "Upgrade the server, or check the proxy in front of it.",
        body=exc.body,
        response=exc.response,
    )


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
        """Chat with a base model or one of your models (any name the gateway resolves, as ``model``).

        ``stream=True`` returns an iterator of ``chat.completion.chunk`` dicts; it is retried
        only until the first chunk. Other keyword arguments (``temperature``, ``max_tokens``,
        ``user``: the sticky key of a route with ``sticky="user"``, ...) are sent as is.

        Raises:
            NotFoundError: ``model_not_found``; ``suggestion`` lists the names you can use.
            ValidationError: ``model_not_served``, ``context_length_exceeded``, ``unsupported_parameter``.
            InternalServerError: ``inference_unavailable`` once the retries are spent (vLLM is
                still starting: wait ``retry_after`` and call again), ``upstream_timeout``, ``upstream_error``.
            FeatureUnavailableError: the server has no chat route.
        """
        body = _chat_body(model, messages, stream, params)
        if stream:
            return self._stream(body, timeout)
        with _feature(GATEWAY):
            return ChatCompletion.from_dict(self._client._request("POST", CHAT_PATH, json=body, timeout=timeout))

    def _stream(self, body: dict[str, Any], timeout: TimeoutTypes) -> Iterator[dict[str, Any]]:
        with _feature(GATEWAY):
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
        async with _afeature(GATEWAY):
            body = await self._client._request("POST", CHAT_PATH, json=body, timeout=timeout)
        return ChatCompletion.from_dict(body)

    async def _stream(self, body: dict[str, Any], timeout: TimeoutTypes) -> AsyncIterator[dict[str, Any]]:
        async with _afeature(GATEWAY):
            async for chunk in self._client._stream_sse(CHAT_PATH, json=body, timeout=timeout):
                yield chunk


class Chat:
    def __init__(self, client: SyncAPIClient) -> None:
        self.completions = Completions(client)


class AsyncChat:
    def __init__(self, client: AsyncAPIClient) -> None:
        self.completions = AsyncCompletions(client)
