"""Turn a path, an open binary file or ``(filename, bytes)`` into a re-playable multipart body.

A retry must send the same bytes again, so the request gets a *factory* that re-opens the
path (or rewinds the file) on every attempt; :meth:`Upload.close` closes what it opened.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any

FileInput = str | os.PathLike[str] | IO[bytes] | tuple[str, bytes]

_CONTENT_TYPE = "application/jsonl"


def looks_like_file_id(value: object) -> bool:
    """A ``file-...`` string that is not also an existing local path is a file id."""
    return isinstance(value, str) and value.startswith("file-") and not os.path.exists(value)


class Upload:
    def __init__(self, source: FileInput) -> None:
        self._opened: list[IO[bytes]] = []
        self._path: Path | None = None
        self._fileobj: IO[bytes] | None = None
        self._start = 0
        self._bytes: bytes | None = None
        if isinstance(source, tuple):
            self.filename, self._bytes = source[0], bytes(source[1])
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"No such dataset file: {path}")
            self._path = path
            self.filename = path.name
        elif hasattr(source, "read"):
            self.filename = os.path.basename(str(getattr(source, "name", "") or "upload.jsonl"))
            if _seekable(source):
                self._fileobj = source
                self._start = source.tell()
            else:
                data = source.read()
                self._bytes = data.encode() if isinstance(data, str) else data
        else:
            raise TypeError(f"Expected a path, a binary file object or (filename, bytes); got {type(source).__name__}")

    def __call__(self) -> dict[str, Any]:
        """The ``files=`` mapping for one attempt."""
        if self._path is not None:
            handle = self._path.open("rb")
            self._opened.append(handle)
            content: Any = handle
        elif self._fileobj is not None:
            self._fileobj.seek(self._start)
            content = self._fileobj
        else:
            content = io.BytesIO(self._bytes or b"")
        return {"file": (self.filename, content, _CONTENT_TYPE)}

    def close(self) -> None:
        for handle in self._opened:
            handle.close()
        self._opened.clear()


def _seekable(fileobj: Any) -> bool:
    try:
        return bool(fileobj.seekable()) and isinstance(fileobj.tell(), int)
    except (AttributeError, OSError, ValueError):
        return False
