"""Relay the training child's protocol lines into service calls, fenced by the attempt's token.

The child speaks ``lora_engine.protocol``; this module is the worker's half of it: metrics
become progress columns plus at most one metrics event per step, messages become events,
checkpoints become ``Checkpoint`` rows (the rows of directories the engine pruned go; the time
since the step's metrics line goes to the worker's checkpoint write histogram), and the
terminal lines (``stopped``, ``error``, ``done``) are kept for the runner to settle the attempt with.

Metrics are written in batches: a fast run prints a line per step, and a progress UPDATE plus
an event INSERT, each its own commit, per step is a write load no progress bar needs. Lines are
buffered and flushed together (one fenced transaction: the progress UPDATE with the latest
values, the buffered events in one INSERT) at most every ``PROGRESS_WRITE_SECONDS``, and at
once for an eval line, the last step, and before any other line is recorded, so the final
progress and every eval point are always written and events stay in the child's order.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine import protocol
from tunings.models import JobEvent
from tunings.services.cleanup import checkpoint_rows_prune
from tunings.services.jobs import job_metrics_events_add
from tunings.services.state import checkpoint_record, tuning_job_record_progress
from workers import celery_metrics
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

    def __init__(
        self,
        writer: FencedWriter,
        *,
        write_interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue: str = "",
        launcher_log: Path | None = None,
    ) -> None:
        """``launcher_log``: a distributed launch's stdout also carries the launcher's own log
        lines (DeepSpeed's launcher logs there, naming server paths and ports); they are appended
        to this file for operators instead of becoming the tenant's events."""
        self.writer = writer
        self.queue = queue
        self.launcher_log = launcher_log
        # (step, when its metrics line arrived): the engine writes a checkpoint right after it.
        self.last_metrics_arrival: tuple[int, float] | None = None
        self.done_line: dict[str, Any] | None = None
        self.error_line: dict[str, Any] | None = None
        self.stopped_line: dict[str, Any] | None = None
        self.last_metrics_event_step = -1
        self.bad_lines = 0
        self.write_interval_s = (
            float(settings.TUNINGLAB["PROGRESS_WRITE_SECONDS"]) if write_interval_s is None else write_interval_s
        )
        self.clock = clock
        self.last_flush = float("-inf")
        # Not yet written: the newest progress columns and the metrics events since the last flush.
        self.pending_fields: dict[str, Any] = {}
        self.pending_events: list[tuple[str, dict[str, Any]]] = []
        self.progress_writes = 0

    def handle(self, line: protocol.Line) -> None:
        """Record one line. Raises LeaseLost when the attempt lost the job, DatabaseError after retries."""
        obj = line.obj
        kind = obj["type"] if obj is not None else None
        arrived = self.clock()
        if kind == protocol.CHECKPOINT:
            self._observe_checkpoint_write(obj, arrived)  # before the flush below adds its own time
        elif kind == protocol.METRICS:
            self.last_metrics_arrival = (int(obj.get("step") or 0), arrived)
        # A terminal line is kept before anything is written: a failed write must not lose it.
        if kind == protocol.STOPPED:
            self.stopped_line = obj
        elif kind == protocol.ERROR:
            self.error_line = obj
        elif kind == protocol.DONE:
            self.done_line = obj
        if kind != protocol.METRICS:
            # Whatever follows (an event, a checkpoint, the end) comes after the buffered metrics.
            self.flush()
        if obj is None and self.launcher_log is not None:
            with contextlib.suppress(OSError), open(self.launcher_log, "a", encoding="utf-8") as fh:
                fh.write(line.raw + "\n")
        elif obj is None:
            self.bad_lines += 1
            if self.bad_lines <= MAX_REPORTED_BAD_LINES:
                self.writer.event(
                    f"Unexpected output from the training process: {line.raw[:300]}", level=JobEvent.Level.WARNING
                )
        elif kind == protocol.METRICS:
            self._on_metrics(obj)
        elif kind == protocol.MESSAGE:
            level = obj.get("level") if obj.get("level") in JobEvent.Level.values else JobEvent.Level.INFO
            self.writer.event(str(obj.get("message", ""))[:4000], level=level)
        elif kind == protocol.CHECKPOINT:
            self._on_checkpoint(obj)

    def _on_metrics(self, m: dict[str, Any]) -> None:
        self.pending_fields.update(job_fields_from_metrics(m))
        step = int(m.get("step") or 0)
        # At most one metrics event per step (a resumed attempt repeats no step it already
        # reported: it starts after the checkpoint's step).
        if step > self.last_metrics_event_step:
            loss = m.get("loss")
            loss_txt = f"{loss:.4f}" if isinstance(loss, int | float) else "nan"
            self.pending_events.append(
                (
                    f"Step {step}/{m.get('total_steps')}: training loss={loss_txt}",
                    {k: v for k, v in m.items() if k != "type"},
                )
            )
            self.last_metrics_event_step = step
        total = m.get("total_steps")
        last_step = isinstance(total, int) and step >= total
        if m.get("eval_loss") is not None or last_step or self.clock() - self.last_flush >= self.write_interval_s:
            self.flush()

    def tick(self) -> None:
        """Flush buffered metrics whose interval has passed (for a caller polling while the child is quiet)."""
        if self.clock() - self.last_flush >= self.write_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered progress columns and metrics events in one fenced transaction.

        The buffer is cleared only after the write committed: a write that failed after its
        retries (DatabaseError) is tried again with the next flush, newer values merged in.
        """
        if not self.pending_fields and not self.pending_events:
            return
        writer = self.writer
        fields, events = dict(self.pending_fields), list(self.pending_events)

        def write() -> None:
            with writer.fenced():
                if fields:
                    tuning_job_record_progress(job_id=writer.job_id, token=writer.token, fields=fields)
                if events:
                    job_metrics_events_add(job_id=writer.job_id, samples=events)

        writer.retry(write, what="metrics")
        self.progress_writes += 1 if fields else 0
        self.last_flush = self.clock()
        self.pending_fields.clear()
        del self.pending_events[: len(events)]

    def _observe_checkpoint_write(self, c: dict[str, Any], arrived: float) -> None:
        """The engine prints a step's metrics line, then writes its checkpoint, then prints the
        checkpoint line: the time between the two arrivals is the write (when that step printed
        metrics; a step that did not has nothing to measure from)."""
        if self.last_metrics_arrival is not None and self.last_metrics_arrival[0] == int(c.get("step") or 0):
            celery_metrics.observe_checkpoint_write(self.queue, arrived - self.last_metrics_arrival[1])

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
                # The engine deleted the directories past keep_checkpoints; their rows go with them.
                checkpoint_rows_prune(job_id=writer.job_id)

        writer.retry(write, what="checkpoint")
