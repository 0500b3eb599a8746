"""The engine ↔ worker protocol: what the training child prints on stdout and how it exits.

One definition both sides import (no torch, no Django): ``lora_engine.progress`` writes these
lines, ``workers.child`` parses them and ``workers`` relays them into the database.

stdout carries exactly one JSON object per line, each with a ``type``:

=============  ==========================================================================
type           fields
=============  ==========================================================================
message        level ("info" | "warning" | "error"), message
metrics        step, total_steps, progress (0..100), loss, lr, grad_norm, tokens_per_s,
               trained_tokens, eta_s, epoch, [eval_loss], ... (all optional but step)
checkpoint     step, path, metrics {loss, eval_loss, trained_tokens}
stopped        step, checkpoint (path or null): stop file / SIGTERM honoured, exit 3
error          code, message, param, suggestion, step: the run failed, exit 1
done           adapter_dir, steps, trained_tokens, final_loss, eval_loss (of the weights
               written), device ("cpu" | "cuda"), select ("last" | "best"), last_eval_loss,
               best_eval_loss, best_step: success, exit 0
=============  ==========================================================================

NaN and infinities are sent as null (JSON has neither).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MESSAGE = "message"
METRICS = "metrics"
CHECKPOINT = "checkpoint"
STOPPED = "stopped"
ERROR = "error"
DONE = "done"
LINE_TYPES = frozenset({MESSAGE, METRICS, CHECKPOINT, STOPPED, ERROR, DONE})

# Process exit codes of ``python -m lora_engine.train``.
EXIT_DONE = 0
EXIT_ERROR = 1
EXIT_STOPPED = 3
# A distributed rank whose peer went away mid-collective (killed, lost node): no error line, so
# the worker resumes the job from its last checkpoint instead of failing it.
EXIT_PEER_LOST = 4

# metrics line field → TuningJob column the worker stores it in (the rest go to the event only).
METRICS_TO_JOB_FIELDS = {
    "progress": "progress",
    "step": "current_step",
    "total_steps": "total_steps",
    "loss": "current_loss",
    "lr": "learning_rate",
    "tokens_per_s": "tokens_per_second",
    "eta_s": "eta_seconds",
    "trained_tokens": "trained_tokens",
    "eval_loss": "eval_loss",
}


@dataclass(frozen=True)
class Line:
    """One stdout line: ``obj`` is the parsed protocol object, or None when the line is not protocol."""

    raw: str
    obj: dict[str, Any] | None

    @property
    def type(self) -> str | None:
        return self.obj.get("type") if self.obj else None


def parse_line(raw: bytes | str) -> Line:
    """Parse one stdout line; anything that is not a JSON object with a known ``type`` has ``obj=None``."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r\n")
    try:
        obj = json.loads(text)
    except ValueError:
        return Line(text, None)
    if not isinstance(obj, dict) or obj.get("type") not in LINE_TYPES:
        return Line(text, None)
    return Line(text, obj)
