"""Auto-paginating iterators over cursor pages (``after`` = id of the last item seen)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

from tuninglab_sdk.types import Page

T = TypeVar("T")


def parse_page(body: dict[str, Any], item: Callable[[dict[str, Any]], T]) -> Page[T]:
    data = [item(row) for row in body.get("data") or []]
    return Page(
        data=data,
        has_more=bool(body.get("has_more")),
        first_id=body.get("first_id") or (data and getattr(data[0], "id", None)) or None,
        last_id=body.get("last_id") or (data and getattr(data[-1], "id", None)) or None,
        raw=body,
    )


class SyncPager(Generic[T]):
    """Iterate every item across pages, fetching the next page lazily.

    ``for job in client.tunings.list(): ...`` walks all jobs; ``.pages()`` yields whole
    :class:`Page` objects; ``.first_page()`` fetches just one.
    """

    def __init__(self, fetch: Callable[[str | None], Page[T]], *, after: str | None = None) -> None:
        self._fetch = fetch
        self._after = after

    def pages(self) -> Iterator[Page[T]]:
        after = self._after
        while True:
            page = self._fetch(after)
            yield page
            # An empty page with has_more=True would loop forever on a buggy server; stop instead.
            if not page.has_more or not page.data or not page.last_id:
                return
            after = page.last_id

    def first_page(self) -> Page[T]:
        return self._fetch(self._after)

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.data


class AsyncPager(Generic[T]):
    """``async for job in client.tunings.list(): ...`` — the async twin of :class:`SyncPager`."""

    def __init__(self, fetch: Callable[[str | None], Awaitable[Page[T]]], *, after: str | None = None) -> None:
        self._fetch = fetch
        self._after = after

    async def pages(self) -> AsyncIterator[Page[T]]:
        after = self._after
        while True:
            page = await self._fetch(after)
            yield page
            if not page.has_more or not page.data or not page.last_id:
                return
            after = page.last_id

    async def first_page(self) -> Page[T]:
        return await self._fetch(self._after)

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.data:
                yield item

    async def to_list(self) -> list[T]:
        return [item async for item in self]
