"""Relay the training child's protocol lines into service calls, fenced by the attempt's token.

The child speaks ``lora_engine.protocol``; this module is the worker's half of it: metrics
become progress columns plus at most one metrics event per step, messages become events,
checkpoints become ``Checkpoint`` rows, and the terminal lines (``stopped``, ``error``,
``done``) are kept for the runner to settle the attempt with.
"""

from __future__ import annotations

import logging
from typing import Any

from lora_engine import protocol
from tunings.models import JobEvent
from tunings.services.state import checkpoint_record, job_event_add, tuning_job_record_progress
from workers.fencing import FencedWriter

log = logging.getLogger(__name__)

# A chatty library must not flood the event log: report this many non-protocol lines per attempt.
MAX_REPORTED_BAD_LINES = 5
# Non-null job columns: a null (NaN arrives as null) must not overwrite them.
NON_NULL_FIELDS = ("progress", "current_step", "total_steps", "trained_tokens")


def job_fields_from_metrics(line: dict[str, Any]) -> dict[str, Any]:
    """The ``TuningJob`` columns a metrics line updates (progress clamped to 0..100, nulls dropped)."""
    fields = {dst: line[src] for src, dst in protocol.METRICS_TO_JOB_FIELDS.items() if src in line}
    if fields.get("eval_loss", 0) is None:
        fields.pop("eval_loss")  # an eval that did not run this step keeps the last one
    if fields.get("progress") is not None:
        fields["progress"] = max(0.0, min(100.0, float(fields["progress"])))
    for name in NON_NULL_FIELDS:
        if name in fields and fields[name] is None:
            fields.pop(name)
    return fields


class LineRelay:
    """Handles each stdout line of one attempt; remembers the terminal lines."""

    def __init__(self, writer: FencedWriter) -> None:
        self.writer = writer
        self.done_line: dict[str, Any] | None = None
        self.error_line: dict[str, Any] | None = None
        self.stopped_line: dict[str, Any] | None = None
        self.last_metrics_event_step = -1
        self.bad_lines = 0

    def handle(self, line: protocol.Line) -> None:
        """Record one line. Raises LeaseLost when the attempt lost the job, DatabaseError after retries."""
        obj = line.obj
        if obj is None:
            self.bad_lines += 1
            if self.bad_lines <= MAX_REPORTED_BAD_LINES:
                self.writer.event(
                    f"Unexpected output from the training process: {line.raw[:300]}", level=JobEvent.Level.WARNING
                )
            return
        kind = obj["type"]
        if kind == protocol.METRICS:
            self._on_metrics(obj)
        elif kind == protocol.MESSAGE:
            level = obj.get("level") if obj.get("level") in JobEvent.Level.values else JobEvent.Level.INFO
            self.writer.event(str(obj.get("message", ""))[:4000], level=level)
        elif kind == protocol.CHECKPOINT:
            self._on_checkpoint(obj)
        elif kind == protocol.STOPPED:
            self.stopped_line = obj
        elif kind == protocol.ERROR:
            self.error_line = obj
        elif kind == protocol.DONE:
            self.done_line = obj

    def _on_metrics(self, m: dict[str, Any]) -> None:
        fields = job_fields_from_metrics(m)
        step = int(m.get("step") or 0)
        writer = self.writer

        def write() -> None:
            with writer.fenced():
                tuning_job_record_progress(job_id=writer.job_id, token=writer.token, fields=fields)
                # At most one metrics event per step (a resumed attempt repeats no step it
                # already reported: it starts after the checkpoint's step).
                if step > self.last_metrics_event_step:
                    loss = m.get("loss")
                    loss_txt = f"{loss:.4f}" if isinstance(loss, int | float) else "nan"
                    job_event_add(
                        job_id=writer.job_id,
                        type=JobEvent.Type.METRICS,
                        message=f"Step {step}/{m.get('total_steps')}: training loss={loss_txt}",
                        data={k: v for k, v in m.items() if k != "type"},
                    )
                    self.last_metrics_event_step = step

        writer.retry(write, what="metrics")

    def _on_checkpoint(self, c: dict[str, Any]) -> None:
        writer = self.writer

        def write() -> None:
            with writer.fenced():
                checkpoint_record(
                    job_id=writer.job_id,
                    step=int(c.get("step") or 0),
                    path=str(c.get("path", "")),
                    metrics=c.get("metrics") or {},
                )

        writer.retry(write, what="checkpoint")
