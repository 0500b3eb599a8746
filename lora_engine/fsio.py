"""Durable, atomic file and directory writes: write a temp, fsync, rename into place.

One place for the crash-safety steps the engine (and the Django side) repeat: a reader
sees the old file/dir or the complete new one, never a half-written one, and a rename
survives a power cut once the parent directory is fsynced. Plain Python, no Django.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

# What a full disk looks like to a writer: ENOSPC, a quota (EDQUOT), or a file-size limit (EFBIG,
# e.g. RLIMIT_FSIZE). The engine's checkpoints and the API's uploads both report it as disk_full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


def is_disk_full_oserror(exc: BaseException) -> bool:
    """True for an ``OSError`` whose errno is one of ``DISK_FULL_ERRNOS``."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (its bytes, not yet its directory entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename/creation inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and every directory under ``root`` (``root`` included)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def publish_file(tmp: Path, final: Path) -> None:
    """Move the complete file ``tmp`` to ``final`` durably, replacing any file there.

    The data is fsynced before the rename, so a crash can never publish a name whose bytes
    are not on disk; the parent dir is fsynced after it, so the new name survives a power
    cut. Readers of ``final`` see the old file or the whole new one. ``tmp`` must be on the
    same filesystem as ``final`` (a rename, not a copy); ``final``'s parent must exist.
    """
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Rename the complete dir ``tmp`` to ``out_dir``, replacing an existing ``out_dir``.

    The old ``out_dir`` is deleted only after the new one is in place and the rename is
    durable, so a crash leaves one complete dir under the name (plus a stray ``.old-*``).
    """
    old = None
    if out_dir.exists():
        # os.replace cannot swap a non-empty dir: move the old one aside first.
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Build a directory in a temp dir next to ``out_dir``; publish it whole on success.

    Yields an empty temp dir to write into. When the block finishes, every file and dir
    in it is fsynced and it replaces ``out_dir`` (``replace_dir``); when the block (or the
    publishing) raises, the temp dir is removed and ``out_dir`` is left as it was.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
