"""``client.files``: upload, get, list, delete datasets (OpenAI file objects)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuninglab_sdk._base import NOT_GIVEN, TimeoutTypes
from tuninglab_sdk._pagination import AsyncPager, SyncPager, parse_page
from tuninglab_sdk._upload import FileInput, Upload
from tuninglab_sdk.types import FileObject, Page

if TYPE_CHECKING:
    from tuninglab_sdk._base import AsyncAPIClient, SyncAPIClient

FILES_PATH = "/v1/files"


def _upload_options(upload: Upload, purpose: str, timeout: TimeoutTypes, idempotency_key: str | None) -> dict[str, Any]:
    """The ``_request`` options of an upload: the multipart factory (re-run per retry) and ``purpose``."""
    return {
        "files": upload,
        "data": {"purpose": purpose},
        "timeout": timeout,
        "idempotency_key": idempotency_key,
    }


def _deleted(file_id: str, body: Any) -> dict[str, Any]:
    """The server's delete answer, or the OpenAI-shaped one when it sent none (204)."""
    return body or {"id": file_id, "deleted": True}


class Files:
    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def upload(
        self,
        file: FileInput,
        *,
        purpose: str = "fine-tune",
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> FileObject:
        """Upload a JSONL dataset (path, binary file object or ``(filename, bytes)``).

        The server validates every line; a bad file is a :class:`ValidationError` whose
        message names the line and ``param`` the field.
        """
        upload = Upload(file)
        try:
            body = self._client._request(
                "POST", FILES_PATH, **_upload_options(upload, purpose, timeout, idempotency_key)
            )
        finally:
            upload.close()
        return FileObject.from_dict(body)

    create = upload  # the openai package's name for it

    def get(self, file_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> FileObject:
        return FileObject.from_dict(self._client._request("GET", f"{FILES_PATH}/{file_id}", timeout=timeout))

    retrieve = get

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        purpose: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> SyncPager[FileObject]:
        """All files, newest first, fetched page by page as you iterate."""

        def fetch(cursor: str | None) -> Page[FileObject]:
            params = {"limit": limit, "after": cursor, "purpose": purpose}
            body = self._client._request("GET", FILES_PATH, params=params, timeout=timeout)
            return parse_page(body, FileObject.from_dict)

        return SyncPager(fetch, after=after)

    def delete(self, file_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> dict[str, Any]:
        """Delete a file; returns ``{"id", "object": "file", "deleted": true}``."""
        return _deleted(file_id, self._client._request("DELETE", f"{FILES_PATH}/{file_id}", timeout=timeout))


class AsyncFiles:
    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def upload(
        self,
        file: FileInput,
        *,
        purpose: str = "fine-tune",
        idempotency_key: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> FileObject:
        upload = Upload(file)
        try:
            body = await self._client._request(
                "POST", FILES_PATH, **_upload_options(upload, purpose, timeout, idempotency_key)
            )
        finally:
            upload.close()
        return FileObject.from_dict(body)

    create = upload

    async def get(self, file_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> FileObject:
        return FileObject.from_dict(await self._client._request("GET", f"{FILES_PATH}/{file_id}", timeout=timeout))

    retrieve = get

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        purpose: str | None = None,
        timeout: TimeoutTypes = NOT_GIVEN,
    ) -> AsyncPager[FileObject]:
        async def fetch(cursor: str | None) -> Page[FileObject]:
            params = {"limit": limit, "after": cursor, "purpose": purpose}
            body = await self._client._request("GET", FILES_PATH, params=params, timeout=timeout)
            return parse_page(body, FileObject.from_dict)

        return AsyncPager(fetch, after=after)

    async def delete(self, file_id: str, *, timeout: TimeoutTypes = NOT_GIVEN) -> dict[str, Any]:
        return _deleted(file_id, await self._client._request("DELETE", f"{FILES_PATH}/{file_id}", timeout=timeout))
