"""``client.models``: the model registry and how the inference gateway routes to it.

The OpenAI model list and model, a registered model's versions, aliases and alias history,
``promote`` / ``rollback``, evaluations and A/B comparisons (``/v1/models...``,
``/v1/evaluations/{id}``, ``/v1/comparisons/{id}[/report]``); its traffic route (weighted
split, sticky key, shadow), live traffic per version and recorded shadow answers
(``/v1/models/{name}/route``, ``/traffic``, ``/shadow_records``).

Each call is described once, without I/O (a :class:`_Call`: method, path, body, how to parse
the answer); ``Models`` and ``AsyncModels`` only send it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from tuninglab_sdk._base import NOT_GIVEN, TimeoutTypes
from tuninglab_sdk._upload import FileInput, looks_like_file_id
from tuninglab_sdk.types import (
    Alias,
    AliasEvent,
    AliasMove,
    Comparison,
    Evaluation,
    FileObject,
    Model,
    ModelVersion,
    Page,
    Route,
    RouteShadow,
    RouteSplit,
    ShadowRecord,
    VersionTraffic,
)

if TYPE_CHECKING:
    from tuninglab_sdk._base import AsyncAPIClient, SyncAPIClient
    from tuninglab_sdk.resources.files import AsyncFiles, Files

MODELS_PATH = "/v1/models"
EVALUATIONS_PATH = "/v1/evaluations"
COMPARISONS_PATH = "/v1/comparisons"
DEFAULT_ALIAS = "production"
DEFAULT_STICKY = "user"  # the server's default: a route keeps each ``user`` on one version
# The largest page the server gives: versions and alias history are read whole, in few requests.
PAGE_SIZE = 100
BASE = "base"

T = TypeVar("T")
DatasetInput = FileInput | FileObject | str
# A route's parts as the typed objects ``route()`` returns, or as the JSON the server takes.
SplitInput = RouteSplit | Mapping[str, int]
ShadowInput = RouteShadow | Mapping[str, int]


@dataclass(frozen=True)
class _Call:
    """One registry request: what to send and how to read the answer (``text``: not JSON)."""

    method: str
    path: str
    parse: Callable[[Any], Any]
    json: Any = None
    params: Mapping[str, Any] | None = None
    timeout: TimeoutTypes = NOT_GIVEN
    idempotency_key: str | None = None
    text: bool = False

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"timeout": self.timeout}
        if self.json is not None:
            options["json"] = self.json
        if self.params:
            options["params"] = self.params
        if self.idempotency_key:
            options["idempotency_key"] = self.idempotency_key
        if self.text:
            options["text"] = True
        return options


def _segment(value: str | int) -> str:
    """A path segment (``ft:`` ids keep their colons; a slash could never be part of a name)."""
    return quote(str(value), safe=":")


def _model_path(name: str, *parts: str | int) -> str:
    return "/".join([MODELS_PATH, _segment(name), *(_segment(p) for p in parts)])


def _rows(body: Any, parse: Callable[[dict[str, Any]], T]) -> list[T]:
    """The ``data`` list of a list answer, parsed (an empty answer is an empty list)."""
    return [parse(row) for row in (body or {}).get("data") or []]


def _page(parse: Callable[[dict[str, Any]], T]) -> Callable[[Any], Page[T]]:
    def read(body: Any) -> Page[T]:
        body = body or {}
        return Page(
            data=_rows(body, parse),
            has_more=bool(body.get("has_more")),
            first_id=body.get("first_id"),
            last_id=body.get("last_id"),
            raw=body,
        )

    return read


def _list_call(path: str, parse: Callable[[dict[str, Any]], T], timeout: TimeoutTypes, after: str | None) -> _Call:
    """One page of a paginated registry list (the caller walks ``last_id`` while ``has_more``)."""
    return _Call("GET", path, _page(parse), params={"limit": PAGE_SIZE, "after": after}, timeout=timeout)


def _move_body(version: int | str | None, alias: str, reason: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"alias": alias}
    if version is not None:
        body["version"] = version
    if reason:
        body["reason"] = reason
    return body


def _run_body(file_id: str, options: Mapping[str, Any]) -> dict[str, Any]:
    return {"file": file_id, **{k: v for k, v in options.items() if v is not None}}


def _side(version: int | str) -> int | str:
    """``"base"`` (the base model without an adapter) or a version number."""
    return BASE if version == BASE else int(version)


def _part(item: SplitInput | ShadowInput, share: str) -> dict[str, Any]:
    """``{"version", share}`` of a split or shadow; a mapping is sent as given (the server names a bad field)."""
    if isinstance(item, Mapping):
        return dict(item)
    return {"version": item.version, share: getattr(item, share)}


def _route_body(splits: Sequence[SplitInput], sticky: str, shadow: ShadowInput | None) -> dict[str, Any]:
    """The whole route: a PUT replaces it, so every field is sent (``shadow`` None: no shadow)."""
    return {
        "splits": [_part(split, "weight") for split in splits],
        "sticky": sticky,
        "shadow": None if shadow is None else _part(shadow, "percent"),
    }


class _Calls:
    """Every registry request ``Models`` and ``AsyncModels`` make, built once here."""

    @staticmethod
    def list(timeout: TimeoutTypes) -> _Call:
        return _Call("GET", MODELS_PATH, lambda body: _rows(body, Model.from_dict), timeout=timeout)

    @staticmethod
    def retrieve(model_id: str, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", f"{MODELS_PATH}/{_segment(model_id)}", Model.from_dict, timeout=timeout)

    @staticmethod
    def versions(name: str, timeout: TimeoutTypes, after: str | None) -> _Call:
        return _list_call(_model_path(name, "versions"), ModelVersion.from_dict, timeout, after)

    @staticmethod
    def version(name: str, version: int, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", _model_path(name, "versions", int(version)), ModelVersion.from_dict, timeout=timeout)

    @staticmethod
    def move(
        action: str,
        name: str,
        version: int | str | None,
        alias: str,
        reason: str | None,
        timeout: TimeoutTypes,
        idempotency_key: str | None,
    ) -> _Call:
        return _Call(
            "POST",
            _model_path(name, action),
            AliasMove.from_dict,
            json=_move_body(version, alias, reason),
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def aliases(name: str, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", _model_path(name, "aliases"), lambda body: _rows(body, Alias.from_dict), timeout=timeout)

    @staticmethod
    def alias_history(name: str, alias: str, timeout: TimeoutTypes, after: str | None) -> _Call:
        return _list_call(_model_path(name, "aliases", alias, "history"), AliasEvent.from_dict, timeout, after)

    @staticmethod
    def evaluate(
        name: str, version: int, file_id: str, options: Mapping[str, Any], timeout: TimeoutTypes, key: str | None
    ) -> _Call:
        return _Call(
            "POST",
            _model_path(name, "versions", int(version), "evaluations"),
            Evaluation.from_dict,
            json=_run_body(file_id, options),
            timeout=timeout,
            idempotency_key=key,
        )

    @staticmethod
    def compare(
        name: str,
        a: int | str,
        b: int | str,
        file_id: str,
        options: Mapping[str, Any],
        timeout: TimeoutTypes,
        key: str | None,
    ) -> _Call:
        body = {"version_a": _side(a), "version_b": _side(b), **_run_body(file_id, options)}
        return _Call(
            "POST",
            _model_path(name, "comparisons"),
            Comparison.from_dict,
            json=body,
            timeout=timeout,
            idempotency_key=key,
        )

    @staticmethod
    def evaluation(evaluation_id: str, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", f"{EVALUATIONS_PATH}/{_segment(evaluation_id)}", Evaluation.from_dict, timeout=timeout)

    @staticmethod
    def comparison(comparison_id: str, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", f"{COMPARISONS_PATH}/{_segment(comparison_id)}", Comparison.from_dict, timeout=timeout)

    @staticmethod
    def comparison_report(comparison_id: str, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", f"{COMPARISONS_PATH}/{_segment(comparison_id)}/report", str, timeout=timeout, text=True)

    @staticmethod
    def route(name: str, timeout: TimeoutTypes) -> _Call:
        return _Call("GET", _model_path(name, "route"), Route.from_dict, timeout=timeout)

    @staticmethod
    def set_route(name: str, body: dict[str, Any], timeout: TimeoutTypes) -> _Call:
        return _Call("PUT", _model_path(name, "route"), Route.from_dict, json=body, timeout=timeout)

    @staticmethod
    def delete_route(name: str, timeout: TimeoutTypes) -> _Call:
        return _Call("DELETE", _model_path(name, "route"), lambda body: None, timeout=timeout)

    @staticmethod
    def traffic(name: str, timeout: TimeoutTypes) -> _Call:
        return _Call(
            "GET", _model_path(name, "traffic"), lambda body: _rows(body, VersionTraffic.from_dict), timeout=timeout
        )

    @staticmethod
    def shadow_records(name: str, limit: int | None, timeout: TimeoutTypes) -> _Call:
        return _Call(
            "GET",
            _model_path(name, "shadow_records"),
            lambda body: _rows(body, ShadowRecord.from_dict),
            params={"limit": limit},
            timeout=timeout,
        )


def _more(page: Page[Any]) -> str | None:
    """The cursor of the next page, or None when this was the last (or a buggy empty) page."""
    return page.last_id if page.has_more and page.data and page.last_id else None


def _dataset(file: DatasetInput) -> str | None:
    """The file id when ``file`` already names an uploaded file; None when it must be uploaded."""
    if isinstance(file, FileObject):
        return file.id
    return str(file) if looks_like_file_id(file) else None


class Models:
    """The model registry: models, versions, aliases (promote / rollback), evaluations, comparisons;
    and the gateway's view of a model: its traffic route, live traffic, shadow records."""

    def __init__(self, client: SyncAPIClient, files: Files) -> None:
        self._client = client
        self._files = files

    def _send(self, call: _Call) -> Any:
        return call.parse(self._client._request(call.method, call.path, **call.options()))

    def _all(self, page_call: Callable[[str | None], _Call]) -> list[Any]:
        rows: list[Any] = []
        after: str | None = None
        while True:
            page = self._send(page_call(after))
            rows.extend(page.data)
            after = _more(page)
            if after is None:
                return rows

    def _file_id(self, file: DatasetInput, timeout: TimeoutTypes) -> str:
        file_id = _dataset(file)
        if file_id is None:
            file_id = self._files.upload(file, timeout=timeout).id
        return file_id

    def list(self, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[Model]:
        """Models you can use: every base model, your registered models and your ``ft:`` ids."""
        return self._send(_Calls.list(timeout))

    def retrieve(self, model_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Model:
        """One model by id: a base model's name, your registered model's name, or an ``ft:`` id."""
        return self._send(_Calls.retrieve(model_id, timeout))

    get = retrieve

    def versions(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[ModelVersion]:
        """Every version of your model ``name``, newest first."""
        return self._all(lambda after: _Calls.versions(name, timeout, after))

    def version(self, name: str, version: int, *, timeout: TimeoutTypes = NOT_GIVEN) -> ModelVersion:
        """Version ``version`` of ``name`` with its lineage, metrics and evaluation summary."""
        return self._send(_Calls.version(name, version, timeout))

    def promote(
        self,
        name: str,
        *,
        version: int | None = None,
        alias: str = DEFAULT_ALIAS,
        reason: str | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AliasMove:
        """Point ``alias`` of ``name`` at ``version`` (default: the newest), after the serving check.

        Raises:
            ConflictError: ``version_not_servable`` (every reason in ``body["error"]["details"]``).
        """
        return self._send(_Calls.move("promote", name, version, alias, reason, timeout, idempotency_key))

    def rollback(
        self,
        name: str,
        *,
        to_version: int | None = None,
        alias: str = DEFAULT_ALIAS,
        reason: str | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AliasMove:
        """Move ``alias`` back to the version it held before (again: further back), or to ``to_version``.

        Raises:
            ConflictError: ``nothing_to_roll_back`` or ``version_not_servable``.
        """
        return self._send(_Calls.move("rollback", name, to_version, alias, reason, timeout, idempotency_key))

    def aliases(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[Alias]:
        """The aliases of ``name`` and the versions they point at."""
        return self._send(_Calls.aliases(name, timeout))

    def alias_history(
        self, name: str, alias: str = DEFAULT_ALIAS, *, timeout: TimeoutTypes = NOT_GIVEN
    ) -> list[AliasEvent]:
        """Every move of ``alias``, newest first."""
        return self._all(lambda after: _Calls.alias_history(name, alias, timeout, after))

    def evaluate(
        self,
        name: str,
        version: int,
        *,
        file: DatasetInput,
        max_examples: int | None = None,
        judge: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Evaluation:
        """Queue an evaluation of ``name`` v``version`` on a dataset (file id, ``FileObject`` or local path).

        Returns the queued evaluation; poll :meth:`evaluation` until ``is_terminal``.
        """
        file_id = self._file_id(file, timeout)
        options = {"max_examples": max_examples, "judge": dict(judge) if judge else None}
        return self._send(_Calls.evaluate(name, version, file_id, options, timeout, idempotency_key))

    def compare(
        self,
        name: str,
        version_a: int | str,
        version_b: int | str,
        *,
        file: DatasetInput,
        max_examples: int | None = None,
        judge: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Comparison:
        """Queue an A/B comparison of two versions of ``name`` (either may be ``"base"``) on a dataset."""
        file_id = self._file_id(file, timeout)
        options = {"max_examples": max_examples, "judge": dict(judge) if judge else None}
        return self._send(_Calls.compare(name, version_a, version_b, file_id, options, timeout, idempotency_key))

    def evaluation(self, evaluation_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Evaluation:
        return self._send(_Calls.evaluation(evaluation_id, timeout))

    def comparison(self, comparison_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Comparison:
        return self._send(_Calls.comparison(comparison_id, timeout))

    def comparison_report(self, comparison_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> str:
        """The comparison as a Markdown document (metric table, win/tie/loss, examples)."""
        return self._send(_Calls.comparison_report(comparison_id, timeout))

    def route(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Route:
        """The traffic route of ``name``: its weighted split, sticky key and shadow.

        Raises:
            NotFoundError: ``route_not_found`` (requests for ``name`` go to its production
                alias, else its latest version), ``model_not_found``.
        """
        return self._send(_Calls.route(name, timeout))

    def set_route(
        self,
        name: str,
        *,
        splits: Sequence[SplitInput],
        sticky: str = DEFAULT_STICKY,
        shadow: ShadowInput | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Route:
        """Replace the route of ``name``: requests that name it bare go to its versions by weight.

        Args:
            splits: ``[{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]`` (or ``RouteSplit``s);
                a version with weight 0 gets nothing (and skips the serving check).
            sticky: ``"user"`` (the request's ``user``), ``"header"`` (``X-Route-Key``),
                ``"api_key"`` or ``"none"``: the key that keeps a caller on one version.
            shadow: ``{"version": 3, "percent": 10}`` (or a ``RouteShadow``): mirror that share of
                routed requests to it and record its answers; None for no shadow.

        Raises:
            ValidationError: ``invalid_route``; ``param`` names the field (``splits[1].weight``).
            NotFoundError: ``model_not_found``, ``version_not_found``.
            ConflictError: ``version_not_servable`` (a version with traffic, or the shadow,
                failed the serving check; the route is unchanged).
        """
        return self._send(_Calls.set_route(name, _route_body(splits, sticky, shadow), timeout))

    def delete_route(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> None:
        """Remove the route: requests for ``name`` go back to its production alias.

        Raises:
            NotFoundError: ``route_not_found``, ``model_not_found``.
        """
        self._send(_Calls.delete_route(name, timeout))

    def traffic(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[VersionTraffic]:
        """Live counters of each version of ``name`` (requests, errors, tokens, latency, shadow), v1 first."""
        return self._send(_Calls.traffic(name, timeout))

    def shadow_records(
        self, name: str, *, limit: int | None = None, timeout: TimeoutTypes = NOT_GIVEN
    ) -> list[ShadowRecord]:
        """The latest ``limit`` (server default 20, at most 100) shadow answers recorded for ``name``, newest first."""
        return self._send(_Calls.shadow_records(name, limit, timeout))


class AsyncModels:
    """The asyncio twin of :class:`Models` (same methods, as coroutines)."""

    def __init__(self, client: AsyncAPIClient, files: AsyncFiles) -> None:
        self._client = client
        self._files = files

    async def _send(self, call: _Call) -> Any:
        return call.parse(await self._client._request(call.method, call.path, **call.options()))

    async def _all(self, page_call: Callable[[str | None], _Call]) -> list[Any]:
        rows: list[Any] = []
        after: str | None = None
        while True:
            page = await self._send(page_call(after))
            rows.extend(page.data)
            after = _more(page)
            if after is None:
                return rows

    async def _file_id(self, file: DatasetInput, timeout: TimeoutTypes) -> str:
        file_id = _dataset(file)
        if file_id is None:
            file_id = (await self._files.upload(file, timeout=timeout)).id
        return file_id

    async def list(self, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[Model]:
        return await self._send(_Calls.list(timeout))

    async def retrieve(self, model_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Model:
        return await self._send(_Calls.retrieve(model_id, timeout))

    get = retrieve

    async def versions(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[ModelVersion]:
        return await self._all(lambda after: _Calls.versions(name, timeout, after))

    async def version(self, name: str, version: int, *, timeout: TimeoutTypes = NOT_GIVEN) -> ModelVersion:
        return await self._send(_Calls.version(name, version, timeout))

    async def promote(
        self,
        name: str,
        *,
        version: int | None = None,
        alias: str = DEFAULT_ALIAS,
        reason: str | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AliasMove:
        return await self._send(_Calls.move("promote", name, version, alias, reason, timeout, idempotency_key))

    async def rollback(
        self,
        name: str,
        *,
        to_version: int | None = None,
        alias: str = DEFAULT_ALIAS,
        reason: str | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AliasMove:
        return await self._send(_Calls.move("rollback", name, to_version, alias, reason, timeout, idempotency_key))

    async def aliases(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[Alias]:
        return await self._send(_Calls.aliases(name, timeout))

    async def alias_history(
        self, name: str, alias: str = DEFAULT_ALIAS, *, timeout: TimeoutTypes = NOT_GIVEN
    ) -> list[AliasEvent]:
        return await self._all(lambda after: _Calls.alias_history(name, alias, timeout, after))

    async def evaluate(
        self,
        name: str,
        version: int,
        *,
        file: DatasetInput,
        max_examples: int | None = None,
        judge: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Evaluation:
        file_id = await self._file_id(file, timeout)
        options = {"max_examples": max_examples, "judge": dict(judge) if judge else None}
        return await self._send(_Calls.evaluate(name, version, file_id, options, timeout, idempotency_key))

    async def compare(
        self,
        name: str,
        version_a: int | str,
        version_b: int | str,
        *,
        file: DatasetInput,
        max_examples: int | None = None,
        judge: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Comparison:
        file_id = await self._file_id(file, timeout)
        options = {"max_examples": max_examples, "judge": dict(judge) if judge else None}
        return await self._send(_Calls.compare(name, version_a, version_b, file_id, options, timeout, idempotency_key))

    async def evaluation(self, evaluation_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Evaluation:
        return await self._send(_Calls.evaluation(evaluation_id, timeout))

    async def comparison(self, comparison_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Comparison:
        return await self._send(_Calls.comparison(comparison_id, timeout))

    async def comparison_report(self, comparison_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> str:
        return await self._send(_Calls.comparison_report(comparison_id, timeout))

    async def route(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> Route:
        return await self._send(_Calls.route(name, timeout))

    async def set_route(
        self,
        name: str,
        *,
        splits: Sequence[SplitInput],
        sticky: str = DEFAULT_STICKY,
        shadow: ShadowInput | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> Route:
        return await self._send(_Calls.set_route(name, _route_body(splits, sticky, shadow), timeout))

    async def delete_route(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> None:
        await self._send(_Calls.delete_route(name, timeout))

    async def traffic(self, name: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> list[VersionTraffic]:
        return await self._send(_Calls.traffic(name, timeout))

    async def shadow_records(
        self, name: str, *, limit: int | None = None, timeout: TimeoutTypes = NOT_GIVEN
    ) -> list[ShadowRecord]:
        return await self._send(_Calls.shadow_records(name, limit, timeout))
