"""Progress display for long ``manage.py`` commands: tqdm bars on stderr.

stdout keeps the command's result (what a script parses); the bar goes to stderr, and only on
a terminal unless forced (``--progress``), so logs and pipes get no carriage-return noise.
``--no-progress`` turns it off on a terminal too. The registry, tunings and workers commands
share it, so it lives in the lowest app layer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from django.core.management.base import CommandParser
from tqdm import tqdm

# How often the activity indicator redraws its elapsed time.
ACTIVITY_REFRESH_S = 0.5


def add_progress_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="Show the progress bar on stderr even when it is not a terminal.",
    )
    parser.add_argument(
        "--no-progress", action="store_false", dest="progress", help="Show no progress bar, even on a terminal."
    )


def bar(*, total: int | None, desc: str, force: bool | None, stream: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on ``stream`` (stderr): on a terminal only when ``force`` is None."""
    # tqdm's disable=None is "off unless the stream is a TTY"; False is on whatever the stream.
    disable = None if force is None else not force
    # A command's self.stderr (Django's OutputWrapper) ends every write with a newline, which
    # would turn each redraw into a line: draw on the stream it wraps.
    file = getattr(stream, "_out", stream) or sys.stderr
    return tqdm(total=total, desc=desc, file=file, disable=disable, dynamic_ncols=True, **kwargs)


@contextmanager
def activity(desc: str, *, force: bool | None, stream: IO[str] | None = None) -> Iterator[None]:
    """Elapsed time on stderr while the block runs, for work that reports no progress of its own."""
    indicator = bar(total=None, desc=desc, force=force, stream=stream, bar_format="{desc}: {elapsed} elapsed")
    done = threading.Event()

    def tick() -> None:
        while not done.wait(ACTIVITY_REFRESH_S):
            indicator.refresh()

    thread = threading.Thread(target=tick, name=f"progress-{desc}", daemon=True)
    if not indicator.disable:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if thread.is_alive():
            thread.join()
        indicator.close()
