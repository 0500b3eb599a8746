"""Reading the end of a log file: the one tail reader the worker, the vLLM supervisor, the admin
and the demo share."""

from __future__ import annotations

import os


def tail_lines(path: str | os.PathLike[str], lines: int, *, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a file, reading at most ``max_bytes`` from its end ([] if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            data = fh.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]
