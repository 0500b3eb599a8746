"""The job runner: claim a job, run the training child, relay its lines, settle the outcome.

``run_job`` is what both the Celery task and the in-process worker call. One attempt:

1. claim the best eligible queued job of the queue (``workers.scheduling``; the message's
   job id is only a hint for which queue to look at);
2. write ``attempt-<n>.json`` (``workers.job_config``) and spawn the child
   (``workers.child``), stderr to ``attempt-<n>.log``;
3. a ``LeaseKeeper`` thread renews the lease; the runner's loop relays every stdout line
   into the database and polls the cancel flag at least every ``POLL_SECONDS``;
4. when the child exits: ``done`` → ``ModelVersion`` + succeeded, ``error`` → failed with
   code/param/suggestion + the log tail, cancel requested → cancelled, otherwise failed with
   ``internal_error`` and the log tail.

Fencing: every write of the attempt happens inside ``fenced()``, a transaction that first
locks the job row *with our fencing token still on it*. Once the sweeper re-queued the job
(token unchanged until the next claim bumps it) or another attempt claimed it (token
bumped), the lock finds no row and nothing is written: no two attempts ever write the same
job. A lost lease also kills the child at once (SIGKILL, not SIGTERM: a fenced-out child
must not write a "stop" checkpoint into the run dir the next attempt resumes from).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from lora_engine.errors import EngineError
from tunings.models import Checkpoint, JobEvent, TuningJob
from tunings.services.state import (
    job_event_add,
    tuning_job_fail,
    tuning_job_mark_cancelled,
    tuning_job_record_progress,
    tuning_job_succeed,
)
from workers import child as child_mod
from workers.job_config import JobPaths, build_train_config, deleted_input_file, job_paths
from workers.lease import LeaseKeeper
from workers.scheduling import claim_next_job

log = logging.getLogger(__name__)
Status = TuningJob.Status

POLL_SECONDS = 0.5  # cancel flag / ownership check period (the brief asks for <= 1 s)
LOG_TAIL_LINES = 20

# Suggestions for failures the worker itself detects (the engine sends its own).
SUGGESTIONS = {
    "internal_error": "Look at the log lines in the job's events; retry the job, and report it if it repeats.",
    "base_model_missing": "Register the base model again with a path that exists on the worker hosts.",
    "invalid_training_data": "Upload the training file again; the stored copy is missing or unreadable.",
    "disk_full": "Free space in the data directory (old checkpoints, adapters) and retry.",
    "invalid_config": "Fix the hyperparameter named in `param` and create the job again.",
    "out_of_memory": "Lower batch_size or rank, shorten max_seq_len, or enable gradient checkpointing / QLoRA.",
}


class LeaseLost(Exception):
    """This attempt no longer owns the job; stop writing."""


def worker_identity(prefix: str = "worker") -> str:
    return f"{prefix}@{socket.gethostname()}:{os.getpid()}"


def run_job(job_id: str | None, *, worker_id: str, queue: str | None = None) -> str | None:
    """Claim and run the best eligible queued job of ``queue`` (or of ``job_id``'s queue).

    Returns the id of the job that ran, or None when there was nothing to claim (a duplicate
    or redelivered message, a cancelled job, or every candidate's owner at its limit).
    Never raises for a job's failure: the worker must stay healthy for the next job.
    """
    if queue is None and job_id:
        queue = TuningJob.objects.filter(id=job_id).values_list("queue", flat=True).first()
        if queue is None:
            log.info("wake-up for unknown job %s: nothing to do", job_id)
            return None
    job = claim_next_job(worker_id=worker_id, queue=queue)
    if job is None:
        log.info("wake-up (%s, queue=%s) on %s: nothing to claim", job_id, queue, worker_id)
        return None
    try:
        JobRunner(job, worker_id=worker_id).run()
    except Exception:
        # Unexpected (a bug, or the database went away): the lease will expire and the
        # sweeper re-queues the job. Logged, not raised, so the worker takes the next one.
        log.exception("runner crashed on job %s", job.id)
    finally:
        # The slot this job held may unblock a job of the same owner; make sure it has a
        # wake-up (dispatch counts pending messages, so this adds at most what is missing).
        from workers.dispatch import dispatch_pending

        with contextlib.suppress(Exception):
            dispatch_pending(job.queue)
    return job.id


def _fine_tuned_model_name(job: TuningJob) -> str:
    try:
        from tunings.services.jobs import fine_tuned_model_name
    except ImportError:
        fine_tuned_model_name = None
    if fine_tuned_model_name is not None:
        return fine_tuned_model_name(job)
    suffix = job.suffix or "ft"
    return f"ft:{job.base_model.name}:{job.owner.get_username()}:{suffix}:{job.id}"


class JobRunner:
    """Runs one claimed attempt of one job."""

    def __init__(self, job: TuningJob, *, worker_id: str) -> None:
        self.job = job
        self.job_id = job.id
        self.token = job.fencing_token
        self.attempt = job.attempt
        self.worker_id = worker_id
        self.paths: JobPaths = job_paths(job.id)
        self.db_lock = threading.Lock()
        self.child: child_mod.TrainingChild | None = None
        self.keeper: LeaseKeeper | None = None
        self.lost = False
        # What the child told us.
        self.done_line: dict[str, Any] | None = None
        self.error_line: dict[str, Any] | None = None
        self.stopped_line: dict[str, Any] | None = None
        self.last_metrics_event_step = -1
        self.bad_lines = 0
        # Cancel handling.
        self.cancel_seen = False
        self.cancel_at = 0.0
        self.term_sent = False

    # --- fenced database access ------------------------------------------------------

    @contextlib.contextmanager
    def fenced(self) -> Iterator[bool]:
        """A transaction in which this attempt provably still owns the job.

        Yields the job's ``cancel_requested``. Raises LeaseLost (and kills the child) when
        the row is no longer ``running`` with our token.
        """
        if self.lost:
            raise LeaseLost(self.job_id)
        with self.db_lock, transaction.atomic():
            row = list(
                TuningJob.objects.select_for_update()
                .filter(id=self.job_id, status=Status.RUNNING, fencing_token=self.token)
                .values_list("cancel_requested", flat=True)[:1]
            )
            if not row:
                self._lost()
                raise LeaseLost(self.job_id)
            yield bool(row[0])

    def _lost(self) -> None:
        self.lost = True
        if self.keeper is not None:
            self.keeper.mark_lost()  # kills the child via on_lost
        elif self.child is not None:
            self.child.kill()

    def _retry(self, fn: Callable[[], Any], *, attempts: int = 5, what: str = "write") -> Any:
        """Run ``fn`` again after transient database errors (SQLite busy, a dropped PG connection)."""
        for i in range(attempts):
            try:
                return fn()
            except LeaseLost:
                raise
            except DatabaseError as exc:
                if i == attempts - 1:
                    raise
                log.warning("job %s: %s failed (%s); retrying", self.job_id, what, exc)
                connections["default"].close()
                time.sleep(0.2 * (i + 1))
        return None

    def _event(self, message: str, *, level: str = JobEvent.Level.INFO, data: dict[str, Any] | None = None) -> None:
        def write() -> None:
            with self.fenced():
                job_event_add(job_id=self.job_id, message=message, level=level, data=data)

        self._retry(write, what="event")

    def _fail(self, code: str, message: str, *, param: str | None = None, suggestion: str = "") -> None:
        tail = self.child.log_tail(LOG_TAIL_LINES) if self.child else []
        suggestion = suggestion or SUGGESTIONS.get(code, SUGGESTIONS["internal_error"])

        def write() -> None:
            with self.fenced():
                if tail:
                    job_event_add(
                        job_id=self.job_id,
                        level=JobEvent.Level.ERROR,
                        message=f"Last {len(tail)} lines of the training log (attempt {self.attempt}).",
                        data={"log_tail": tail, "attempt": self.attempt},
                    )
                if not tuning_job_fail(
                    job_id=self.job_id, token=self.token, code=code, message=message, param=param, suggestion=suggestion
                ):
                    raise LeaseLost(self.job_id)

        with contextlib.suppress(LeaseLost):
            self._retry(write, attempts=10, what="fail")

    # --- the attempt -----------------------------------------------------------------

    def run(self) -> None:
        log.info("job %s: attempt %s on %s (token %s)", self.job_id, self.attempt, self.worker_id, self.token)
        try:
            if not self._prepare():
                return
            self._spawn()
            if self.child is None:
                return
            self._relay()
            if self.keeper is not None:
                self.keeper.stop()
                self.keeper.join(timeout=10)
            if self.lost:
                log.warning("job %s: attempt %s lost its lease; wrote nothing more", self.job_id, self.attempt)
                return
            self._settle()
        except LeaseLost:
            log.warning("job %s: attempt %s lost its lease; wrote nothing more", self.job_id, self.attempt)
        except Exception as exc:
            # A bug or an outage in the worker itself: fail the job now (if we still own it and
            # the database answers) rather than let it bounce through every attempt.
            log.exception("job %s: worker error", self.job_id)
            if self.child is not None:
                self.child.kill()
            with contextlib.suppress(Exception):
                self._fail("internal_error", f"Worker error: {type(exc).__name__}: {exc}")
        finally:
            if self.keeper is not None:
                self.keeper.stop()
            if self.child is not None:
                self.child.close()

    def _prepare(self) -> bool:
        """Build and write the config. False (job failed) when it cannot run at all."""
        job = self.job
        deleted = deleted_input_file(job)
        if deleted is not None:
            param, file_id = deleted
            self._fail(
                "file_deleted",
                f"The {param.replace('_', ' ')} {file_id} was deleted; this job cannot run.",
                param=param,
                suggestion="Upload the dataset again and create a new job with the new file id.",
            )
            return False
        try:
            built = build_train_config(job, attempt=self.attempt)
        except EngineError as exc:
            self._fail(exc.code, exc.message, param=exc.param, suggestion=exc.suggestion or "")
            return False
        cfg = built.config
        if not Path(cfg.base_model_dir).is_dir():
            self._fail(
                "base_model_missing",
                f"Base model {job.base_model.name!r} is not at {cfg.base_model_dir} on this worker.",
                param="base_model",
            )
            return False
        for param, path in (("training_file", cfg.train_file), ("validation_file", cfg.validation_file)):
            if path and not Path(path).is_file():
                self._fail("invalid_training_data", f"The stored {param.replace('_', ' ')} is missing.", param=param)
                return False
        try:
            self.paths.run_dir.mkdir(parents=True, exist_ok=True)
            if not job.cancel_requested:
                # A STOP left by an earlier attempt's path must not stop this one at step 1.
                self.paths.stop_file.unlink(missing_ok=True)
            cfg_path = self.paths.config_file(self.attempt)
            tmp = cfg_path.with_suffix(".json.tmp")
            cfg.to_json(tmp)
            os.replace(tmp, cfg_path)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._fail("disk_full", f"No space left in the data directory: {exc}")
            else:
                self._fail("internal_error", f"Cannot write the run config: {exc}")
            return False
        self.config = cfg
        self.config_path = cfg_path
        if built.ignored:
            self._event(
                f"Ignored hyperparameters the engine does not know: {', '.join(built.ignored)}.",
                level=JobEvent.Level.WARNING,
            )
        return True

    def _spawn(self) -> None:
        argv = child_mod.train_command(self.config_path)
        child = child_mod.TrainingChild(argv, log_path=self.paths.log_file(self.attempt), cwd=self.paths.job_dir)
        try:
            child.start()
        except OSError as exc:
            self._fail("internal_error", f"Cannot start the training process: {exc}")
            return
        self.child = child
        self.keeper = LeaseKeeper(
            job_id=self.job_id,
            token=self.token,
            interval_s=settings.TUNINGLAB["HEARTBEAT_SECONDS"],
            lease_s=settings.TUNINGLAB["LEASE_SECONDS"],
            on_lost=self._on_lease_lost,
            db_lock=self.db_lock,
        )
        self.keeper.start()
        resume = " (resuming from the newest checkpoint)" if self.config.resume else ""
        self._event(
            f"Training process started{resume}.",
            data={"attempt": self.attempt, "pid": child.pid, "worker": self.worker_id, "resume": self.config.resume},
        )

    def _on_lease_lost(self) -> None:
        self.lost = True
        if self.child is not None:
            self.child.kill()

    def _relay(self) -> None:
        """Pump stdout lines into the database until the child closes stdout and exits."""
        assert self.child is not None
        next_poll = 0.0
        while True:
            item = self.child.next_line(timeout=0.2)
            if self.lost:
                break
            if item is child_mod.EOF:
                break
            if item is not None:
                try:
                    self._handle(item)  # type: ignore[arg-type]
                except LeaseLost:
                    break
                except DatabaseError:
                    # Metrics are not worth a dead job; the lease keeper decides about ownership.
                    log.exception("job %s: could not record a line", self.job_id)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                try:
                    self._poll_cancel(now)
                except LeaseLost:
                    break
                except DatabaseError:
                    log.warning("job %s: cancel poll failed", self.job_id, exc_info=True)
        if self.lost:
            self.child.kill()
        # stdout closed: the child is exiting. Give it a moment, then make sure.
        if self.child.wait(30) is None:
            self.child.kill()
            self.child.wait(10)

    def _poll_cancel(self, now: float) -> None:
        # A plain read, no transaction: it only decides whether to stop; writes are fenced.
        row = list(
            TuningJob.objects.filter(id=self.job_id, status=Status.RUNNING, fencing_token=self.token).values_list(
                "cancel_requested", flat=True
            )[:1]
        )
        if not row:
            self._lost()
            raise LeaseLost(self.job_id)
        cancel_requested = bool(row[0])
        if cancel_requested and not self.cancel_seen:
            self.cancel_seen = True
            self.cancel_at = now
            # The engine checks the stop file at every step boundary, checkpoints, exits 3.
            with contextlib.suppress(OSError):
                self.paths.stop_file.touch()
            self._event("Stop requested; the training process stops at the next step boundary.")
        grace = float(settings.TUNINGLAB.get("CANCEL_GRACE_SECONDS", 60))
        if self.cancel_seen and not self.term_sent and now - self.cancel_at > grace:
            # A step that never ends (hung I/O, a huge step): the engine also stops on SIGTERM.
            self.term_sent = True
            self.child.signal(signal.SIGTERM)
        if self.cancel_seen and self.term_sent and now - self.cancel_at > 2 * grace:
            self.child.kill()

    def _handle(self, line: child_mod.Line) -> None:
        obj = line.obj
        if obj is None:
            self.bad_lines += 1
            if self.bad_lines <= 5:  # a chatty library must not flood the event log
                self._event(
                    f"Unexpected output from the training process: {line.raw[:300]}",
                    level=JobEvent.Level.WARNING,
                )
            return
        kind = obj["type"]
        if kind == "metrics":
            self._on_metrics(obj)
        elif kind == "message":
            level = obj.get("level") if obj.get("level") in JobEvent.Level.values else JobEvent.Level.INFO
            self._event(str(obj.get("message", ""))[:4000], level=level)
        elif kind == "checkpoint":
            self._on_checkpoint(obj)
        elif kind == "stopped":
            self.stopped_line = obj
        elif kind == "error":
            self.error_line = obj
        elif kind == "done":
            self.done_line = obj

    def _on_metrics(self, m: dict[str, Any]) -> None:
        fields: dict[str, Any] = {}
        mapping = {
            "progress": "progress",
            "step": "current_step",
            "total_steps": "total_steps",
            "loss": "current_loss",
            "lr": "learning_rate",
            "tokens_per_s": "tokens_per_second",
            "eta_s": "eta_seconds",
            "trained_tokens": "trained_tokens",
        }
        for src, dst in mapping.items():
            if src in m:
                fields[dst] = m[src]
        if m.get("eval_loss") is not None:
            fields["eval_loss"] = m["eval_loss"]
        if "progress" in fields and fields["progress"] is not None:
            fields["progress"] = max(0.0, min(100.0, float(fields["progress"])))
        # Non-null columns cannot take a null (NaN arrives as null).
        for name in ("progress", "current_step", "total_steps", "trained_tokens"):
            if fields.get(name, 0) is None:
                fields.pop(name)
        step = int(m.get("step") or 0)

        def write() -> None:
            with self.fenced():
                tuning_job_record_progress(job_id=self.job_id, token=self.token, fields=fields)
                # At most one metrics event per step (a resumed attempt repeats no step it
                # already reported: it starts after the checkpoint's step).
                if step > self.last_metrics_event_step:
                    loss = m.get("loss")
                    loss_txt = f"{loss:.4f}" if isinstance(loss, (int, float)) else "nan"
                    job_event_add(
                        job_id=self.job_id,
                        type=JobEvent.Type.METRICS,
                        message=f"Step {step}/{m.get('total_steps')}: training loss={loss_txt}",
                        data={k: v for k, v in m.items() if k != "type"},
                    )
                    self.last_metrics_event_step = step

        self._retry(write, what="metrics")

    def _on_checkpoint(self, c: dict[str, Any]) -> None:
        step = int(c.get("step") or 0)

        def write() -> None:
            with self.fenced():
                _, created = Checkpoint.objects.get_or_create(
                    job_id=self.job_id,
                    step=step,
                    defaults={"path": str(c.get("path", "")), "metrics": c.get("metrics") or {}},
                )
                if created:
                    job_event_add(
                        job_id=self.job_id,
                        message=f"Checkpoint saved at step {step}.",
                        data={"step": step, "path": c.get("path")},
                    )

        self._retry(write, what="checkpoint")

    # --- the outcome -----------------------------------------------------------------

    def _settle(self) -> None:
        assert self.child is not None
        rc = self.child.poll()
        cancel_requested = bool(
            TuningJob.objects.filter(id=self.job_id).values_list("cancel_requested", flat=True).first()
        )
        if self.done_line is not None and rc == 0:
            self._succeed()
        elif cancel_requested:
            self._cancelled()
        elif self.error_line is not None:
            e = self.error_line
            self._fail(
                str(e.get("code") or "internal_error"),
                str(e.get("message") or "The training process reported an error."),
                param=e.get("param"),
                suggestion=str(e.get("suggestion") or ""),
            )
        elif self.stopped_line is not None or rc == 3:
            self._release_for_resume()
        elif rc is not None and rc < 0:
            signum = -rc
            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
            # We only signal on cancel or lease loss, both handled above; anything else came
            # from outside (often the kernel's OOM killer). A retry would likely die the same
            # way, so the job fails instead of burning its attempts.
            self._fail(
                "out_of_memory" if signum == signal.SIGKILL else "internal_error",
                f"The training process was killed by {name}"
                + (" (the kernel's OOM killer does this when memory runs out)." if signum == signal.SIGKILL else "."),
            )
        else:
            what = "finished without a final status line" if rc == 0 else f"exited with code {rc}"
            last = self.child.log_tail(1)
            self._fail("internal_error", f"The training process {what}" + (f": {last[0]}" if last else "."))

    def _succeed(self) -> None:
        from registry.versions import model_version_create_from_job

        d = self.done_line or {}
        adapter_dir = Path(d.get("adapter_dir") or self.paths.adapter_dir)
        name = _fine_tuned_model_name(self.job)
        fields = {
            "trained_tokens": d.get("trained_tokens") or self.job.trained_tokens,
            "current_step": d.get("steps") or 0,
        }
        if d.get("final_loss") is not None:
            fields["current_loss"] = d["final_loss"]
        if d.get("eval_loss") is not None:
            fields["eval_loss"] = d["eval_loss"]
        created_dir: list[str] = []

        def write() -> None:
            with self.fenced():
                mv = model_version_create_from_job(
                    job=self.job,
                    adapter_dir=adapter_dir,
                    metrics={k: d.get(k) for k in ("steps", "trained_tokens", "final_loss", "eval_loss")},
                )
                created_dir.append(mv.adapter_path)
                if not tuning_job_succeed(job_id=self.job_id, token=self.token, fine_tuned_model=name, fields=fields):
                    raise LeaseLost(self.job_id)
                job_event_add(
                    job_id=self.job_id,
                    message=f"Adapter stored as {mv.name} v{mv.version}.",
                    data={"model_version": mv.id, "adapter_path": mv.adapter_path},
                )

        try:
            self._retry(write, what="succeed")
        except LeaseLost:
            self._drop_dirs(created_dir)
            raise
        except Exception as exc:
            self._drop_dirs(created_dir)
            if isinstance(exc, DatabaseError):
                raise
            self._fail("internal_error", f"Could not store the adapter: {exc}")

    @staticmethod
    def _drop_dirs(dirs: list[str]) -> None:
        # The row was rolled back with the transaction; its files must go too.
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _cancelled(self) -> None:
        step = (self.stopped_line or {}).get("step")

        def write() -> None:
            with self.fenced():
                if not tuning_job_mark_cancelled(job_id=self.job_id, token=self.token):
                    raise LeaseLost(self.job_id)

        with contextlib.suppress(LeaseLost):
            self._retry(write, attempts=10, what="cancel")
        log.info("job %s cancelled at step %s", self.job_id, step)

    def _release_for_resume(self) -> None:
        """The child stopped but nobody cancelled (a SIGTERM from outside, e.g. a host shutdown).

        Expire our lease and let the sweeper re-queue it: the next attempt resumes from the
        checkpoint the engine wrote when it stopped.
        """
        from workers.sweeper import sweep

        def write() -> None:
            with self.fenced():
                job_event_add(
                    job_id=self.job_id,
                    level=JobEvent.Level.WARNING,
                    message="The training process stopped without a cancel request; re-queueing to resume.",
                    data={"stopped": self.stopped_line, "returncode": self.child.poll() if self.child else None},
                )
                tuning_job_record_progress(
                    job_id=self.job_id,
                    token=self.token,
                    fields={"lease_until": timezone.now() - timedelta(seconds=1)},
                )

        with contextlib.suppress(LeaseLost):
            self._retry(write, what="release")
        sweep()
