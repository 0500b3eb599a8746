"""Writes the engine's side of the JSON-line protocol (``lora_engine.protocol``) to stdout.

stdout carries exactly one JSON object per line, nothing else (the worker parses
every line). `claim_stdout()` moves the real stdout aside for the emitter and points
fd 1 and `sys.stdout` at stderr, so stray prints from libraries cannot corrupt the
stream. Each line is flushed immediately; with `metrics_file` set it is also
appended (and flushed) there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import IO, Any

from lora_engine import protocol
from lora_engine.protocol import LINE_TYPES

log = logging.getLogger("lora_engine.progress")


def claim_stdout() -> IO[str]:
    """Return a private handle on the original stdout and redirect fd 1 to stderr."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", encoding="utf-8", buffering=1)


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: report them as null rather than emit invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class ProgressEmitter:
    """Writes protocol lines to a stream (stdout) and optionally a metrics file."""

    def __init__(
        self, stream: IO[str] | None = None, metrics_file: str | None = None, *, only: frozenset[str] | None = None
    ):
        """``only``: the line types to write (others are dropped); a distributed run's ranks
        other than 0 write only their errors, rank 0 reports the run."""
        self.only = only
        self.stream = stream if stream is not None else sys.stdout
        self._metrics_fh: IO[str] | None = None
        if metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
            self._metrics_fh = open(metrics_file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self.last_error: dict[str, Any] | None = None

    def emit(self, obj: dict[str, Any]) -> None:
        if obj.get("type") not in LINE_TYPES:
            raise ValueError(f"unknown progress line type {obj.get('type')!r}")
        if self.only is not None and obj["type"] not in self.only:
            return
        line = json.dumps(_clean(obj), allow_nan=False, separators=(",", ":"))
        log.info("%s", line)  # the run's own record in train.log / stderr
        for fh in (self.stream, self._metrics_fh):
            if fh is None:
                continue
            try:
                fh.write(line + "\n")
                fh.flush()
            except (BrokenPipeError, ValueError):
                # The worker went away (or the file was closed): keep training, the
                # checkpoints are the durable record.
                pass

    def message(self, message: str, level: str = "info") -> None:
        self.emit({"type": protocol.MESSAGE, "level": level, "message": message})

    def metrics(self, **fields: Any) -> None:
        self.emit({"type": protocol.METRICS, **fields})

    def checkpoint(self, *, step: int, path: str, metrics: dict[str, Any]) -> None:
        self.emit({"type": protocol.CHECKPOINT, "step": step, "path": path, "metrics": metrics})

    def stopped(self, *, step: int, checkpoint: str | None) -> None:
        self.emit({"type": protocol.STOPPED, "step": step, "checkpoint": checkpoint})

    def error(self, *, code: str, message: str, param: str | None, suggestion: str, step: int | None) -> None:
        obj = {
            "type": protocol.ERROR,
            "code": code,
            "message": message,
            "param": param,
            "suggestion": suggestion,
            "step": step,
        }
        self.last_error = obj
        self.emit(obj)

    def done(
        self,
        *,
        adapter_dir: str,
        steps: int,
        trained_tokens: int,
        final_loss: float,
        eval_loss: float | None,
        device: str | None = None,
        select: str = "last",
        last_eval_loss: float | None = None,
        best_eval_loss: float | None = None,
        best_step: int | None = None,
        strategy: str = "none",
        world_size: int = 1,
        rank_memory: list[dict[str, Any]] | None = None,
    ) -> None:
        """`eval_loss` is the validation loss of the weights written (the best or the last
        evaluated step, per `select`); `last_eval_loss` / `best_eval_loss` at `best_step` are both kept.
        `rank_memory`: per rank, its RSS before the model loaded and its peak RSS (MiB)."""
        self.emit(
            {
                "type": protocol.DONE,
                "adapter_dir": adapter_dir,
                "steps": steps,
                "trained_tokens": trained_tokens,
                "final_loss": final_loss,
                "eval_loss": eval_loss,
                "device": device,
                "select": select,
                "last_eval_loss": last_eval_loss,
                "best_eval_loss": best_eval_loss,
                "best_step": best_step,
                "strategy": strategy,
                "world_size": world_size,
                "rank_memory": rank_memory or [],
            }
        )

    def close(self) -> None:
        if self._metrics_fh is not None:
            self._metrics_fh.close()
            self._metrics_fh = None
