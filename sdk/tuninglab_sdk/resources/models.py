"""``client.models`` and ``client.chat.completions`` — **server support pending**.

The model registry and the inference gateway ship in a later server release. These methods
call their documented routes already (``GET /v1/models``, ``GET /v1/models/{name}/versions``,
``POST /v1/models/{name}/promote|rollback``, ``POST /v1/chat/completions``); against a server
without them they raise :class:`FeatureUnavailableError` instead of a confusing 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tuninglab_sdk._base import NOT_GIVEN, TimeoutTypes
from tuninglab_sdk._errors import APIStatusError, FeatureUnavailableError
from tuninglab_sdk.types import Model, ModelVersion

if TYPE_CHECKING:
    from tuninglab_sdk._base import AsyncAPIClient, SyncAPIClient

MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"

T = TypeVar("T")


def _is_pending(exc: APIStatusError) -> bool:
    """A missing route: 404 without our JSON error envelope (Django's default page), or 501/503."""
    if exc.status in (501, 503):
        return True
    return exc.status == 404 and not (isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict))


def _pending_error(exc: APIStatusError, feature: str) -> FeatureUnavailableError:
    return FeatureUnavailableError(
        f"{feature} is not available on this server yet (HTTP {exc.status}): server support pending. "
        "Upgrade the server, or check that the inference gateway / registry is enabled.",
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


def _rows(body: Any, parse: Callable[[dict[str, Any]], T]) -> list[T]:
    """The ``data`` list of a list answer, parsed (an empty answer is an empty list)."""
    return [parse(row) for row in (body or {}).get("data") or []]


def _promote_body(version: str | int | None, alias: str, reason: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"alias": alias}
    if version is not None:
        body["version"] = version
    if reason:
        body["reason"] = reason
    return body


# promote and rollback are one operation, moving an alias: (route action, feature name for errors).
_PROMOTE = ("promote", "Model promotion")
_ROLLBACK = ("rollback", "Model rollback")


class Models:
    """Registry operations (server support pending)."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def list(self, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[Model]:
        """Models you can call: base models and adapter aliases (``GET /v1/models``)."""
        with _feature("The model list"):
            body = self._client._request("GET", MODELS_PATH, timeout=timeout)
        return _rows(body, Model.from_dict)

    def versions(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[ModelVersion]:
        """Registered adapter versions of ``name``, newest first."""
        with _feature("The model registry"):
            body = self._client._request("GET", f"{MODELS_PATH}/{name}/versions", timeout=timeout)
        return _rows(body, ModelVersion.from_dict)

    def promote(
        self,
        name: str,
        *,
        version: str | int | None = None,
        alias: str = "production",
        reason: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> dict[str, Any]:
        """Point ``alias`` of ``name`` at ``version`` (default: the newest); returns the server's answer."""
        return self._move_alias(_PROMOTE, name, version, alias, reason, timeout)

    def rollback(
        self,
        name: str,
        *,
        to_version: str | int | None = None,
        alias: str = "production",
        reason: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> dict[str, Any]:
        """Move ``alias`` back to the previous version (or ``to_version``); returns the server's answer."""
        return self._move_alias(_ROLLBACK, name, to_version, alias, reason, timeout)

    def _move_alias(
        self,
        op: tuple[str, str],
        name: str,
        version: str | int | None,
        alias: str,
        reason: str | None,
        timeout: TimeoutTypes,
    ) -> dict[str, Any]:
        action, feature = op
        with _feature(feature):
            return self._client._request(
                "POST", f"{MODELS_PATH}/{name}/{action}", json=_promote_body(version, alias, reason), timeout=timeout
            )


class AsyncModels:
    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def list(self, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[Model]:
        async with _afeature("The model list"):
            body = await self._client._request("GET", MODELS_PATH, timeout=timeout)
        return _rows(body, Model.from_dict)

    async def versions(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[ModelVersion]:
        async with _afeature("The model registry"):
            body = await self._client._request("GET", f"{MODELS_PATH}/{name}/versions", timeout=timeout)
        return _rows(body, ModelVersion.from_dict)

    async def promote(
        self,
        name: str,
        *,
        version: str | int | None = None,
        alias: str = "production",
        reason: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> dict[str, Any]:
        return await self._move_alias(_PROMOTE, name, version, alias, reason, timeout)

    async def rollback(
        self,
        name: str,
        *,
        to_version: str | int | None = None,
        alias: str = "production",
        reason: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> dict[str, Any]:
        return await self._move_alias(_ROLLBACK, name, to_version, alias, reason, timeout)

    async def _move_alias(
        self,
        op: tuple[str, str],
        name: str,
        version: str | int | None,
        alias: str,
        reason: str | None,
        timeout: TimeoutTypes,
    ) -> dict[str, Any]:
        action, feature = op
        async with _afeature(feature):
            return await self._client._request(
                "POST", f"{MODELS_PATH}/{name}/{action}", json=_promote_body(version, alias, reason), timeout=timeout
            )


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
