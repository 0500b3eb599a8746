"""The job runner: claim a job, run the training child, relay its lines, settle the outcome.

``run_job`` is what both the Celery task and the in-process worker call. One attempt:

1. claim the best eligible queued job of the queue (``workers.scheduling``; the message's
   job id is only a hint for which queue to look at);
2. start the ``LeaseKeeper`` (heartbeat + watchdog), then prepare the attempt's own run dir
   ``run/attempt-<n>/``: it starts from the newest complete checkpoint of earlier attempts,
   hard-linked in (``lora_engine.manifest.adopt_checkpoint``), never from their dirs themselves;
3. write ``attempt-<n>.json`` (``workers.job_config``) — and for a DeepSpeed job the
   generated ``attempt-<n>.deepspeed.json`` —, record the launch on the row
   (``TuningJob.launch_config``), for a multi-node run send nodes 1..nnodes-1 to their
   workers (``workers.followers``; this worker is node 0), and spawn the child
   (``workers.child``: the engine, or the distributed launcher that starts its ranks), stderr
   to ``attempt-<n>.log``;
4. the runner's loop relays every stdout line into the database and polls the cancel flag
   and the job's wall-clock budget (``JOB_TIMEOUT_SECONDS``) at least every ``POLL_SECONDS``;
5. when the child exits: ``done`` → ``ModelVersion`` + succeeded, ``error`` → failed with
   code/param/suggestion + the log tail, cancel requested → cancelled, out of time → failed
   with ``timeout``, a distributed launcher that exited non-zero without an error line (a rank
   was killed or lost) → released to resume from the last checkpoint in a new attempt (failed
   with ``max_attempts_exceeded`` on the last one), otherwise failed with ``internal_error``
   and the log tail.

This module is the attempt's lifecycle; ``workers.relay`` turns lines into service calls and
``workers.fencing`` makes every write prove the attempt still owns the job. A lost lease
kills the child at once (SIGKILL, not SIGTERM: a fenced-out child has nothing left to save).
Files need no fence: a child writes only its own attempt's dir, which no later attempt writes
or resumes from in place, so one that outlives its lease (until the watchdog kills it) can
spoil nothing but its own leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from lora_engine import protocol
from lora_engine.errors import EngineError
from lora_engine.fsio import atomic_write_text
from lora_engine.manifest import Adopted, adopt_checkpoint
from registry.models import ModelVersion
from registry.naming import fine_tuned_model_name
from registry.services.aliases import model_promote
from registry.services.versions import (
    AdapterError,
    model_version_after_registration,
    model_version_create_from_job,
    model_version_stage,
)
from tuninglab.errors import ApiError
from tunings.models import JobEvent, TuningJob
from tunings.services.dispatch import dispatch_pending
from tunings.services.jobs import tuning_job_record_launch
from tunings.services.state import (
    job_event_add,
    tuning_job_fail,
    tuning_job_mark_cancelled,
    tuning_job_release_lease,
    tuning_job_succeed,
)
from workers import celery_metrics, followers
from workers import child as child_mod
from workers.fencing import FencedWriter, LeaseLost
from workers.job_config import JobPaths, build_train_config, deleted_input_file, job_paths
from workers.lease import LeaseKeeper
from workers.relay import LineRelay
from workers.scheduling import claim_next_job
from workers.sweeper import sweep

log = logging.getLogger(__name__)
Status = TuningJob.Status

# Cancel flag / ownership check period: a cancel reaches the child within about a second.
POLL_SECONDS = 0.5
LOG_TAIL_LINES = 20
# What the version records from the engine's done line: the loss of the weights written (eval_loss)
# and, with select=best, the last and best validation losses and the best step.
DONE_METRICS = (
    "steps",
    "trained_tokens",
    "final_loss",
    "eval_loss",
    "select",
    "last_eval_loss",
    "best_eval_loss",
    "best_step",
)

# The job ran longer than ``TUNINGLAB["JOB_TIMEOUT_SECONDS"]`` (a stable error code of the API).
TIMEOUT = "timeout"
# Every attempt ended without a result (the sweeper uses the same code for lost workers).
MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"
# How long a timed-out child gets to stop on SIGTERM (it checkpoints at a step boundary) before SIGKILL.
TIMEOUT_GRACE_SECONDS = 30.0
# Suggestions for failures the worker itself detects (the engine sends its own).
SUGGESTIONS = {
    "internal_error": "Look at the log lines in the job's events; retry the job, and report it if it repeats.",
    "base_model_missing": "Register the base model again with a path that exists on the worker hosts.",
    "invalid_training_data": "Upload the training file again; the stored copy is missing or unreadable.",
    "disk_full": "Free space in the data directory (old checkpoints, adapters) and retry.",
    "invalid_config": "Fix the hyperparameter named in `param` and create the job again.",
    "out_of_memory": "Lower batch_size or rank, shorten max_seq_len, or enable gradient checkpointing / QLoRA.",
    TIMEOUT: "Train fewer steps or a smaller model, or ask an operator to raise TUNINGLAB_JOB_TIMEOUT_SECONDS; "
    "create the job again.",
    MAX_ATTEMPTS_EXCEEDED: "Look at the log lines in the job's events (a rank killed by the OOM killer or a "
    "lost host); lower batch_size or use fewer processes, then create the job again.",
}


def seed_metrics_file(source_run_dir: Path, target: Path, *, up_to_step: int) -> None:
    """Start ``target`` with the metrics lines of ``source_run_dir`` up to the adopted step.

    A copy, not a link: the engine appends to it. Only whole, parseable lines of steps the new
    attempt will not repeat, so a source child still appending leaves no torn line behind.
    """
    source = source_run_dir / "metrics.jsonl"
    if not source.is_file():
        return
    kept = []
    for raw in source.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if not raw.endswith("\n"):
            break
        parsed = protocol.parse_line(raw)
        step = (parsed.obj or {}).get("step")
        if parsed.obj is not None and (not isinstance(step, int) or step <= up_to_step):
            kept.append(raw)
    atomic_write_text(target, "".join(kept))


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
        with celery_metrics.job_running(job.queue):
            JobRunner(job, worker_id=worker_id).run()
    except Exception:
        # Unexpected (a bug, or the database went away): the lease will expire and the
        # sweeper re-queues the job. Logged, not raised, so the worker takes the next one.
        log.exception("runner crashed on job %s", job.id)
    finally:
        # The slot this job held may unblock a job of the same owner; make sure it has a
        # wake-up (dispatch counts pending messages, so this adds at most what is missing).
        with contextlib.suppress(Exception):
            dispatch_pending(job.queue)
    return job.id


class JobRunner:
    """Runs one claimed attempt of one job: prepare, spawn, pump lines, settle."""

    def __init__(self, job: TuningJob, *, worker_id: str) -> None:
        self.job = job
        self.job_id = job.id
        self.token = job.fencing_token
        self.attempt = job.attempt
        self.worker_id = worker_id
        self.paths: JobPaths = job_paths(job.id)
        self.run_dir = self.paths.attempt_dir(job.attempt)
        self.adopted: Adopted | None = None
        self.child: child_mod.TrainingChild | None = None
        self.keeper: LeaseKeeper | None = None
        self.writer = FencedWriter(job_id=job.id, token=job.fencing_token, on_lost=self._on_fenced_out)
        # A launcher's own log lines share stdout with rank 0's JSON lines: they go to the attempt's
        # log (operators), not the tenant's events.
        distributed = (job.distributed or {}).get("strategy", "none") != "none"
        self.relay = LineRelay(
            self.writer, queue=job.queue, launcher_log=self.paths.log_file(job.attempt) if distributed else None
        )
        self.started = time.monotonic()
        # Cancel handling.
        self.cancel_seen = False
        self.cancel_at = 0.0
        self.term_sent = False
        # The job's wall-clock budget counts from its first attempt's start: a re-queue (worker
        # lost) does not buy a job more time. Kept on this host's monotonic clock from here on.
        started_at = job.started_at or timezone.now()
        spent = max(0.0, (timezone.now() - started_at).total_seconds())
        self.timeout_s = float(settings.TUNINGLAB["JOB_TIMEOUT_SECONDS"])
        self.deadline = self.started + self.timeout_s - spent
        self.timed_out_at: float | None = None

    @property
    def lost(self) -> bool:
        return self.writer.lost

    def _on_fenced_out(self) -> None:
        """A fenced write found the job no longer ours: stop the heartbeat's work and the child."""
        if self.keeper is not None:
            self.keeper.mark_lost()  # kills the child via _on_lease_lost
        elif self.child is not None:
            self.child.kill()

    def _on_lease_lost(self) -> None:
        """The heartbeat lost the lease (runs on its thread): no more writes, kill the child now."""
        self.writer.lost = True  # before reading self.child: _spawn sets the child, then reads this
        if self.child is not None:
            self.child.kill()

    def _fail(self, code: str, message: str, *, param: str | None = None, suggestion: str = "") -> None:
        tail = self.child.log_tail(LOG_TAIL_LINES) if self.child else []
        suggestion = suggestion or SUGGESTIONS.get(code, SUGGESTIONS["internal_error"])

        def write() -> None:
            with self.writer.fenced():
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
            self.writer.retry(write, attempts=10, what="fail")

    # --- the attempt -----------------------------------------------------------------

    def run(self) -> None:
        log.info("job %s: attempt %s on %s (token %s)", self.job_id, self.attempt, self.worker_id, self.token)
        # The lease runs from the claim: keep it alive while preparing too (linking a big
        # checkpoint), and let the watchdog end the attempt whatever the runner is stuck in.
        self.keeper = LeaseKeeper(
            job_id=self.job_id,
            token=self.token,
            interval_s=settings.TUNINGLAB["HEARTBEAT_SECONDS"],
            lease_s=settings.TUNINGLAB["LEASE_SECONDS"],
            on_lost=self._on_lease_lost,
            db_lock=self.writer.db_lock,
        )
        self.keeper.start()
        try:
            if not self._prepare() or self.lost:
                return
            self._spawn()
            if self.child is None:
                return
            self._pump()
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
        if time.monotonic() >= self.deadline:
            self._fail(TIMEOUT, self._timeout_message())
            return False
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
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not job.cancel_requested:
                # A STOP left by an earlier attempt's path must not stop this one at step 1.
                self.paths.stop_file.unlink(missing_ok=True)
            self.adopted = adopt_checkpoint(
                self.paths.earlier_checkpoint_roots(self.attempt), self.run_dir / "checkpoints"
            )
            metrics_file = self.run_dir / "metrics.jsonl"
            if self.adopted is not None:
                seed_metrics_file(self.adopted.source.parent.parent, metrics_file, up_to_step=self.adopted.step)
            # Resume exactly when there is a checkpoint to resume from.
            cfg = cfg.replace(resume=self.adopted is not None)
            cfg_path = self.paths.config_file(self.attempt)
            atomic_write_text(cfg_path, cfg.to_json() + "\n")
            launch = child_mod.launch_command(cfg, cfg_path, job_dir=self.paths.job_dir)
            ds_config = launch.launch_config.get("deepspeed_config")
            if ds_config is not None:
                # A copy for operators (the admin shows the row's); the ranks build the same dict.
                atomic_write_text(
                    self.paths.deepspeed_config_file(self.attempt),
                    json.dumps(ds_config, indent=2, sort_keys=True) + "\n",
                )
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._fail("disk_full", f"No space left in the data directory: {exc}")
            else:
                self._fail("internal_error", f"Cannot write the run config: {exc}")
            return False
        self.config = cfg
        self.config_path = cfg_path
        self.launch = launch
        if built.ignored:
            self.writer.event(
                f"Ignored hyperparameters the engine does not know: {', '.join(built.ignored)}.",
                level=JobEvent.Level.WARNING,
            )
        return True

    def _spawn(self) -> None:
        launch = self.launch

        def record() -> None:
            with self.writer.fenced():
                if not tuning_job_record_launch(
                    job_id=self.job_id, token=self.token, launch_config=launch.launch_config
                ):
                    raise LeaseLost(self.job_id)

        self.writer.retry(record, what="record launch")
        if not self._start_followers():
            return
        child = child_mod.TrainingChild(
            launch.argv, log_path=self.paths.log_file(self.attempt), cwd=self.paths.job_dir, env=launch.env
        )
        try:
            child.start()
        except OSError as exc:
            self._fail("internal_error", f"Cannot start the training process: {exc}")
            return
        self.child = child
        if self.lost:  # the lease went while it started (_on_lease_lost saw no child yet)
            child.kill()
            return
        adopted = self.adopted
        resume = f" (resuming after step {adopted.step})" if adopted is not None else ""
        self.writer.event(
            f"Training process started{resume}.",
            data={
                "attempt": self.attempt,
                "pid": child.pid,
                "worker": self.worker_id,
                "resume": self.config.resume,
                "resume_step": adopted.step if adopted is not None else None,
                "launcher": launch.launch_config["launcher"],
                "world_size": launch.launch_config["world_size"],
            },
        )

    def _start_followers(self) -> bool:
        """A multi-node run: send nodes 1..nnodes-1 their starts (``workers.followers``) before node 0's launcher.

        False (the job failed) when they cannot be sent: node 0 alone would wait at the rendezvous.
        """
        nnodes = self.config.distributed.nnodes
        if nnodes <= 1:
            return True
        launch = self.launch.launch_config
        queue = followers.multi_node_queue(self.job.queue)
        try:
            followers.send_follower_starts(
                job_id=self.job_id,
                attempt=self.attempt,
                token=self.token,
                nnodes=nnodes,
                master_addr=launch["master_addr"],
                master_port=launch["master_port"],
                queue=queue,
            )
        except Exception:
            log.exception("job %s: could not send the follower nodes' starts to queue %s", self.job_id, queue)
            self._fail("internal_error", f"Could not start the other {nnodes - 1} node(s) of this multi-node job.")
            return False
        self.writer.event(
            f"Sent the start of nodes 1..{nnodes - 1} to their workers.",
            data={"attempt": self.attempt, "nnodes": nnodes, "queue": queue},
        )
        return True

    def _pump(self) -> None:
        """Pump stdout lines into the relay until the child closes stdout and exits."""
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
                    self.relay.handle(item)  # type: ignore[arg-type]
                except LeaseLost:
                    break
                except DatabaseError:
                    # Metrics are not worth a dead job; the lease keeper decides about ownership.
                    log.exception("job %s: could not record a line", self.job_id)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                self._check_timeout(now)
                try:
                    # Buffered metrics whose interval passed: the child may be quiet for long.
                    self.relay.tick()
                    self._poll_cancel(now)
                except LeaseLost:
                    break
                except DatabaseError:
                    log.warning("job %s: progress write or cancel poll failed", self.job_id, exc_info=True)
        if not self.lost:
            # The last buffered progress of a child that ended without a terminal line (killed,
            # out of memory): terminal lines flush on their own.
            try:
                self.relay.flush()
            except LeaseLost:
                pass
            except DatabaseError:
                log.warning("job %s: last progress write failed", self.job_id, exc_info=True)
        if self.lost:
            self.child.kill()
        # stdout closed: the child is exiting. Give it a moment, then make sure.
        if self.child.wait(30) is None:
            self.child.kill()
            self.child.wait(10)

    def _timeout_message(self) -> str:
        return f"The job ran out of its time: it may run for {self.timeout_s:.0f} s from its first start."

    def _check_timeout(self, now: float) -> None:
        """Past the deadline: SIGTERM (the engine checkpoints and exits), SIGKILL after a grace."""
        assert self.child is not None
        if now < self.deadline:
            return
        if self.timed_out_at is None:
            self.timed_out_at = now
            log.warning("job %s: out of time (%.0f s); stopping the child", self.job_id, self.timeout_s)
            self.child.signal(signal.SIGTERM)
        elif now - self.timed_out_at > TIMEOUT_GRACE_SECONDS:
            self.child.kill()

    def _poll_cancel(self, now: float) -> None:
        # A plain read, no transaction: it only decides whether to stop; writes are fenced.
        row = list(
            TuningJob.objects.filter(id=self.job_id, status=Status.RUNNING, fencing_token=self.token).values_list(
                "cancel_requested", flat=True
            )[:1]
        )
        if not row:
            self.writer.mark_lost()
            raise LeaseLost(self.job_id)
        cancel_requested = bool(row[0])
        if cancel_requested and not self.cancel_seen:
            self.cancel_seen = True
            self.cancel_at = now
            # The engine checks the stop file at every step boundary, checkpoints, exits EXIT_STOPPED.
            with contextlib.suppress(OSError):
                self.paths.stop_file.touch()
            self.writer.event("Stop requested; the training process stops at the next step boundary.")
        grace = float(settings.TUNINGLAB.get("CANCEL_GRACE_SECONDS", 60))
        if self.cancel_seen and not self.term_sent and now - self.cancel_at > grace:
            # A step that never ends (hung I/O, a huge step): the engine also stops on SIGTERM.
            self.term_sent = True
            self.child.signal(signal.SIGTERM)
        if self.cancel_seen and self.term_sent and now - self.cancel_at > 2 * grace:
            self.child.kill()

    # --- the outcome -----------------------------------------------------------------

    def _settle(self) -> None:
        assert self.child is not None
        rc = self.child.poll()
        relay = self.relay
        cancel_requested = bool(
            TuningJob.objects.filter(id=self.job_id).values_list("cancel_requested", flat=True).first()
        )
        if relay.done_line is not None and rc == protocol.EXIT_DONE:
            self._succeed()
        elif cancel_requested:
            self._cancelled()
        elif self.timed_out_at is not None:
            self._fail(TIMEOUT, self._timeout_message())
        elif relay.error_line is not None:
            e = relay.error_line
            self._fail(
                str(e.get("code") or "internal_error"),
                str(e.get("message") or "The training process reported an error."),
                param=e.get("param"),
                suggestion=str(e.get("suggestion") or ""),
            )
        elif relay.stopped_line is not None or rc == protocol.EXIT_STOPPED:
            self._release_for_resume()
        elif self.config.distributed.is_distributed and rc not in (None, protocol.EXIT_DONE):
            self._rank_lost(rc)
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
            what = "finished without a final status line" if rc == protocol.EXIT_DONE else f"exited with code {rc}"
            # The log's lines (kept in the log-tail event for operators) name server paths and
            # hosts; the tenant's message says what happened, not where.
            self._fail("internal_error", f"The training process {what} (attempt {self.attempt}).")

    def _succeed(self) -> None:
        d = self.relay.done_line or {}
        adapter_dir = Path(d.get("adapter_dir") or self.run_dir / "adapter")
        name = fine_tuned_model_name(self.job)
        fields = {
            "trained_tokens": d.get("trained_tokens") or self.job.trained_tokens,
            "current_step": d.get("steps") or 0,
        }
        if d.get("final_loss") is not None:
            fields["current_loss"] = d["final_loss"]
        if d.get("eval_loss") is not None:
            fields["eval_loss"] = d["eval_loss"]
        created_dir: list[str] = []
        versions: list[str] = []
        # Copy and hash before taking the row lock: for full weights this takes minutes, and the
        # lease heartbeat shares the lock.
        try:
            staged = model_version_stage(job=self.job, adapter_dir=adapter_dir)
        except (AdapterError, OSError) as exc:
            self._fail("internal_error", f"Could not store the result: {exc}")
            return

        def write() -> None:
            if created_dir:
                # An earlier try renamed the staged copy into place, then its transaction rolled
                # back (no row points at it): take the files back for this try.
                os.rename(created_dir.pop(), staged.path)
            with self.writer.fenced():
                mv = model_version_create_from_job(
                    job=self.job,
                    staged=staged,
                    metrics={
                        **{k: d.get(k) for k in DONE_METRICS},
                        "duration_s": round(time.monotonic() - self.started, 3),
                    },
                    config=self.config.to_dict(),
                    metrics_file=Path(self.config.metrics_file) if self.config.metrics_file else None,
                    device=d.get("device"),
                )
                versions.append(mv.id)
                created_dir.append(mv.adapter_path)
                if not tuning_job_succeed(job_id=self.job_id, token=self.token, fine_tuned_model=name, fields=fields):
                    raise LeaseLost(self.job_id)
                job_event_add(
                    job_id=self.job_id,
                    message=f"Adapter stored as {mv.name} v{mv.version}.",
                    data={"model_version": mv.id, "adapter_path": mv.adapter_path},
                )

        try:
            self.writer.retry(write, what="succeed")
        except LeaseLost:
            self._drop_dirs(created_dir)
            raise
        except Exception as exc:
            self._drop_dirs(created_dir)
            if isinstance(exc, DatabaseError):
                raise
            self._fail("internal_error", f"Could not store the adapter: {exc}")
            return
        finally:
            staged.discard()
        # Committed: the job is done whatever follows. MLflow, the automatic evaluation and the
        # promotion are follow-ups that never fail it (registry_sync and the API can redo them).
        model_version_after_registration(version_id=versions[-1])
        self._promote(versions[-1])

    def _promote(self, version_id: str) -> None:
        """Move the job's ``promote_to`` alias to the new version (after the serving check).

        A refusal (the check, a lost race with another move) is an event on the job, not a
        failure: the version is registered and can be promoted by hand.
        """
        alias = self.job.promote_to
        if not alias:
            return
        version = ModelVersion.objects.select_related("registered_model").get(pk=version_id)
        label = f"{version.registered_model.name} v{version.version}"
        try:
            model_promote(
                owner=self.job.owner,
                name=version.registered_model.name,
                version=version.version,
                alias=alias,
                reason=f"promote_to of job {self.job_id}",
            )
        except ApiError as exc:
            job_event_add(
                job_id=self.job_id,
                level=JobEvent.Level.WARNING,
                message=f"{label} was not promoted to {alias}: {exc.message}",
                data={"model_version": version_id, "alias": alias, "code": exc.code},
            )
            return
        job_event_add(
            job_id=self.job_id,
            message=f"Promoted {label} to {alias}.",
            data={"model_version": version_id, "alias": alias},
        )

    @staticmethod
    def _drop_dirs(dirs: list[str]) -> None:
        # The row was rolled back with the transaction; its files must go too.
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _cancelled(self) -> None:
        step = (self.relay.stopped_line or {}).get("step")

        def write() -> None:
            with self.writer.fenced():
                if not tuning_job_mark_cancelled(job_id=self.job_id, token=self.token):
                    raise LeaseLost(self.job_id)

        with contextlib.suppress(LeaseLost):
            self.writer.retry(write, attempts=10, what="cancel")
        log.info("job %s cancelled at step %s", self.job_id, step)

    def _rank_lost(self, rc: int) -> None:
        """A distributed launcher ended with ``rc`` and no rank reported an error: a rank was killed or lost.

        The launchers run with no restarts in place, so the job resumes from its last (sharded)
        checkpoint in a new attempt, like after a lost worker; the last attempt fails instead.
        """
        launcher = self.launch.launch_config["launcher"]
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            how = f"the {launcher} launcher was killed by {name}"
        else:
            how = f"the {launcher} launcher exited with code {rc}"
        max_attempts = self.job.max_attempts
        if self.attempt >= max_attempts:
            self._fail(
                MAX_ATTEMPTS_EXCEEDED,
                f"Attempt {self.attempt} of {max_attempts} lost a training process ({how}, no rank reported "
                "an error); no attempts are left.",
            )
            return
        message = (
            f"Attempt {self.attempt} lost a training process ({how}, no rank reported an error); "
            "the job resumes from its last checkpoint in a new attempt."
        )
        tail = self.child.log_tail(LOG_TAIL_LINES) if self.child else []
        data = {"attempt": self.attempt, "returncode": rc, "launcher": launcher, "log_tail": tail}

        def write() -> None:
            with self.writer.fenced():
                job_event_add(job_id=self.job_id, level=JobEvent.Level.WARNING, message=message, data=data)
                if not tuning_job_release_lease(job_id=self.job_id, token=self.token, data={"returncode": rc}):
                    raise LeaseLost(self.job_id)

        with contextlib.suppress(LeaseLost):
            self.writer.retry(write, what="release")
        sweep()

    def _release_for_resume(self) -> None:
        """The child stopped but nobody cancelled (a SIGTERM from outside, e.g. a host shutdown).

        Give up our lease and let the sweeper re-queue the job: the next attempt resumes from
        the checkpoint the engine wrote when it stopped.
        """
        data = {"stopped": self.relay.stopped_line, "returncode": self.child.poll() if self.child else None}

        def write() -> None:
            with self.writer.fenced():
                if not tuning_job_release_lease(job_id=self.job_id, token=self.token, data=data):
                    raise LeaseLost(self.job_id)

        with contextlib.suppress(LeaseLost):
            self.writer.retry(write, what="release")
        sweep()
