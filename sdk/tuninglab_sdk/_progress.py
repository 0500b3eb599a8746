"""The progress display of ``wait_for_completion`` / ``tuninglab tunings watch``.

tqdm when it is installed (the ``progress`` extra), else one plain status line: the SDK
must not require more than httpx.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Protocol

from tuninglab_sdk.types import TuningJob


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe(job: TuningJob) -> str:
    """``status=running loss=1.2345 step=3/10 eta=00:12`` — the facts we show about a job."""
    parts = [f"status={job.status}"]
    if job.loss is not None:
        parts.append(f"loss={job.loss:.4f}")
    if job.total_steps:
        parts.append(f"step={job.current_step or 0}/{job.total_steps}")
    if not job.is_terminal:
        parts.append(f"eta={format_eta(job.eta_seconds)}")
    elif job.fine_tuned_model:
        parts.append(f"model={job.fine_tuned_model}")
    return " ".join(parts)


class ProgressDisplay(Protocol):
    def update(self, job: TuningJob) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def update(self, job: TuningJob) -> None:
        pass

    def close(self) -> None:
        pass


class TextProgress:
    """One line per change; rewritten in place on a terminal."""

    def __init__(self, job_id: str, stream: IO[str] | None = None) -> None:
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self._last = ""
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, job: TuningJob) -> None:
        line = f"{self.job_id} {job.progress or 0.0:5.1f}% {describe(job)}"
        if line == self._last:
            return
        self._last = line
        if self._tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


class TqdmProgress:
    """A tqdm bar over 0..100 % with status, loss, step and the server's ETA as postfix."""

    def __init__(self, job_id: str, tqdm_cls: Any, stream: IO[str] | None = None) -> None:
        self._bar = tqdm_cls(
            total=100.0,
            desc=job_id,
            file=stream or sys.stderr,
            # The server knows the ETA (steps left x step time); tqdm's own rate guess would be
            # wrong while the job is queued, so show ours in the postfix instead.
            bar_format="{desc}: {percentage:5.1f}%|{bar}| [{elapsed}] {postfix}",
            dynamic_ncols=True,
        )

    def update(self, job: TuningJob) -> None:
        value = min(100.0, max(0.0, job.progress or 0.0))
        self._bar.n = value
        self._bar.set_postfix_str(describe(job), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def make_progress(job_id: str, enabled: bool, stream: IO[str] | None = None) -> ProgressDisplay:
    """tqdm if installed, else plain text; a no-op when ``enabled`` is False."""
    if not enabled:
        return NullProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return TextProgress(job_id, stream)
    return TqdmProgress(job_id, tqdm, stream)
