"""Follower nodes of a multi-node job: the launcher of node ``k`` (1..nnodes-1), run by a worker on node ``k``.

One Celery worker per node. The worker that claims a job with ``distributed.nnodes > 1`` is
node 0 (``workers.runner``): it owns the job's lease and state, its rank 0 reports on stdout,
and before it spawns its own launcher it sends one `FOLLOW_NODE` message per other node
(`send_follower_starts`) to ``TUNINGLAB["MULTI_NODE_QUEUE"]`` (default: the job's queue). The
worker that takes one runs `follow_node`:

1. the message names the attempt (number and fencing token): a message for an attempt that no
   longer runs (redelivered, late) starts nothing;
2. the config is the file node 0 wrote for the attempt (``attempt-<n>.json``), read from the
   shared ``DATA_DIR``, so every node trains exactly the same run; a node that cannot read it
   (no shared data dir) or has no base model fails the job at once, with the attempt's token,
   instead of leaving node 0 waiting at the rendezvous;
3. it starts ``launch_plan(cfg, ..., node_rank=k, master_addr, master_port)`` with
   ``workers.child.TrainingChild`` (stderr to ``attempt-<n>.node<k>.log``). Its ranks report
   only their errors; each error line becomes a job event (node 0 decides the outcome: its
   ranks fail in the next collective, and the runner treats that as a lost rank);
4. it polls the job every `POLL_SECONDS` and kills its launcher as soon as the attempt no longer
   owns the job (fenced out, re-queued, cancelled, failed, succeeded); a cancel requested on a
   running job gets the grace node 0's runner gives it (the ranks stop at a step boundary
   through the shared stop file), then SIGTERM, then SIGKILL.

The follower writes nothing but events (and the failure in 2.), each fenced with the attempt's
token: it never touches the lease, which node 0's heartbeat keeps. Nothing from a request
reaches its argv beyond what ``launch_plan`` builds from the validated config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from lora_engine import protocol
from lora_engine.config import TrainConfig
from lora_engine.errors import EngineError
from lora_engine.launchers import launch_plan
from tuninglab import dispatch
from tuninglab.task_names import FOLLOW_NODE
from tunings.models import JobEvent, TuningJob
from tunings.services.state import job_event_add, tuning_job_fail
from workers import child as child_mod
from workers.fencing import FencedWriter, LeaseLost
from workers.job_config import job_paths

log = logging.getLogger(__name__)

# How often a follower reads its job's row: a fenced-out or cancelled node stops within this.
POLL_SECONDS = 2.0
LOG_TAIL_LINES = 20

# `follow_node`'s outcomes (for logs and tests).
STALE = "stale"  # the attempt no longer ran when the message arrived: nothing started
NOT_STARTED = "not_started"  # this node cannot run the attempt: the job was failed
FINISHED = "finished"  # the launcher exited 0 (the run ended)
EXITED = "exited"  # the launcher exited non-zero by itself (node 0 settles the job)
STOPPED = "stopped"  # the attempt lost the job and this follower stopped its launcher

# Failures this node detects before it starts (the tenant's message says what, not where).
NODE_SUGGESTIONS = {
    "node_unavailable": "Ask an operator to give every worker node the same TUNINGLAB_DATA_DIR "
    "(shared storage), then retry the job.",
    "base_model_missing": "Register the base model again with a path that exists on every worker node.",
    "internal_error": "Look at the log lines in the job's events; retry the job, and report it if it repeats.",
}


@dataclass(frozen=True)
class FollowerStart:
    """What a follower message carries: which attempt, which node, and node 0's rendezvous."""

    job_id: str
    attempt: int
    token: int
    node_rank: int
    master_addr: str
    master_port: int

    def args(self) -> list[Any]:
        """The message's positional arguments (JSON-safe, in field order)."""
        return list(astuple(self))


def multi_node_queue(job_queue: str) -> str:
    """The queue follower starts go to: ``TUNINGLAB["MULTI_NODE_QUEUE"]``, else the job's own."""
    return str(settings.TUNINGLAB.get("MULTI_NODE_QUEUE") or job_queue)


def send_follower_starts(
    *, job_id: str, attempt: int, token: int, nnodes: int, master_addr: str, master_port: int, queue: str
) -> list[FollowerStart]:
    """Send one `FOLLOW_NODE` message per node rank 1..nnodes-1 to ``queue``.

    Raises:
        Exception: whatever ``tuninglab.dispatch.send_task`` raises (the broker is down).
    """
    starts = [FollowerStart(job_id, attempt, token, rank, master_addr, master_port) for rank in range(1, nnodes)]
    for start in starts:
        dispatch.send_task(FOLLOW_NODE, args=start.args(), queue=queue)
    return starts


def follow_node(start: FollowerStart, *, worker_id: str) -> str:
    """Run node ``start.node_rank`` of the attempt until its launcher exits; returns the outcome."""
    return Follower(start, worker_id=worker_id).run()


class Follower:
    """One follower node of one attempt: check, start the launcher, relay its errors, stop it when fenced out."""

    def __init__(self, start: FollowerStart, *, worker_id: str) -> None:
        self.start = start
        self.worker_id = worker_id
        self.paths = job_paths(start.job_id)
        self.child: child_mod.TrainingChild | None = None
        self.writer = FencedWriter(job_id=start.job_id, token=start.token, on_lost=self._kill)
        self.stopped = False
        self.errors_reported = 0
        self.cancel_at: float | None = None
        self.term_sent = False

    @property
    def node(self) -> str:
        return f"node {self.start.node_rank}"

    def _kill(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.stopped = True
            self.child.kill()

    def _ours(self) -> bool | None:
        """``cancel_requested`` while the attempt still runs the job, else None. A plain read: it only
        decides whether to go on; writes are fenced."""
        row = list(
            TuningJob.objects.filter(
                id=self.start.job_id,
                status=TuningJob.Status.RUNNING,
                attempt=self.start.attempt,
                fencing_token=self.start.token,
            ).values_list("cancel_requested", flat=True)[:1]
        )
        return bool(row[0]) if row else None

    def run(self) -> str:
        start = self.start
        if self._ours() is None:
            log.info("job %s: attempt %s no longer runs; %s starts nothing", start.job_id, start.attempt, self.node)
            return STALE
        cfg = self._config()
        if cfg is None:
            return NOT_STARTED
        try:
            self._spawn(cfg)
            if self.child is None:
                return NOT_STARTED
            self._pump()
            return self._settle()
        finally:
            if self.child is not None:
                self.child.close()

    def _config(self) -> TrainConfig | None:
        """The attempt's config as node 0 wrote it; None (the job failed) when this node cannot run it."""
        start = self.start
        path = self.paths.config_file(start.attempt)
        try:
            cfg = TrainConfig.from_json(path)
        except EngineError as exc:
            log.error("job %s: %s cannot read %s: %s", start.job_id, self.node, path, exc.message)
            self._fail(
                "node_unavailable",
                f"Node {start.node_rank} of this multi-node job cannot read the job's files: the worker nodes "
                "do not share one data directory.",
            )
            return None
        if not 0 < start.node_rank < cfg.distributed.nnodes:
            log.error(
                "job %s: node rank %s outside the run's %s nodes", start.job_id, start.node_rank, cfg.distributed.nnodes
            )
            self._fail(
                "internal_error", f"Node {start.node_rank} is not a node of this {cfg.distributed.nnodes}-node run."
            )
            return None
        if not Path(cfg.base_model_dir).is_dir():
            log.error("job %s: base model dir %s missing on %s", start.job_id, cfg.base_model_dir, self.node)
            self._fail(
                "base_model_missing", f"The base model is missing on node {start.node_rank} of this multi-node job."
            )
            return None
        return cfg

    def _fail(self, code: str, message: str) -> None:
        """Fail the job with this attempt's token: node 0 would otherwise wait for this node at the rendezvous."""
        start = self.start

        def write() -> None:
            with self.writer.fenced():
                if not tuning_job_fail(
                    job_id=start.job_id,
                    token=start.token,
                    code=code,
                    message=message,
                    suggestion=NODE_SUGGESTIONS[code],
                ):
                    raise LeaseLost(start.job_id)

        with contextlib.suppress(LeaseLost):
            self.writer.retry(write, attempts=10, what="fail")

    def _spawn(self, cfg: TrainConfig) -> None:
        start = self.start
        plan = launch_plan(
            cfg,
            str(self.paths.config_file(start.attempt)),
            python=child_mod.python_executable(),
            cuda=child_mod.worker_has_cuda(),
            node_rank=start.node_rank,
            master_addr=start.master_addr,
            master_port=start.master_port,
        )
        log_path = self.paths.job_dir / f"attempt-{start.attempt}.node{start.node_rank}.log"
        child = child_mod.TrainingChild(list(plan.argv), log_path=log_path, cwd=self.paths.job_dir, env=dict(plan.env))
        try:
            child.start()
        except OSError as exc:
            log.error("job %s: %s cannot start its launcher: %s", start.job_id, self.node, exc)
            self._fail(
                "internal_error",
                f"Node {start.node_rank} of this multi-node job could not start its training processes.",
            )
            return
        self.child = child
        try:
            self.writer.event(
                f"Node {start.node_rank} of {cfg.distributed.nnodes} started its training processes.",
                data={
                    "attempt": start.attempt,
                    "node_rank": start.node_rank,
                    "pid": child.pid,
                    "worker": self.worker_id,
                },
            )
        except LeaseLost:
            pass  # on_lost killed the launcher; the pump sees it end
        except DatabaseError:
            log.warning("job %s: %s could not record its start", start.job_id, self.node, exc_info=True)

    def _pump(self) -> None:
        """Relay error lines and poll the job until the launcher closes stdout, then make sure it exited."""
        assert self.child is not None
        next_poll = time.monotonic() + POLL_SECONDS
        while True:
            item = self.child.next_line(timeout=0.2)
            if item is child_mod.EOF:
                break
            if isinstance(item, protocol.Line) and item.type == protocol.ERROR:
                self._report_error(item.obj or {})
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                self._poll(now)
        if self.child.wait(30) is None:
            self.child.kill()
            self.child.wait(10)

    def _poll(self, now: float) -> None:
        assert self.child is not None
        try:
            cancel_requested = self._ours()
        except DatabaseError:
            # The database may be back at the next poll; the ranks end anyway when node 0's do.
            log.warning("job %s: %s could not read its job", self.start.job_id, self.node, exc_info=True)
            return
        if cancel_requested is None:
            log.info(
                "job %s: attempt %s no longer owns the job; %s stops", self.start.job_id, self.start.attempt, self.node
            )
            self._kill()
            return
        if not cancel_requested:
            return
        # Node 0's runner stops the ranks at a step boundary (the stop file, which ours read too)
        # and escalates after the same grace: a step that never ends must not keep this node.
        grace = float(settings.TUNINGLAB.get("CANCEL_GRACE_SECONDS", 60))
        if self.cancel_at is None:
            self.cancel_at = now
        elif not self.term_sent and now - self.cancel_at > grace:
            self.term_sent = True
            self.stopped = True
            self.child.signal(signal.SIGTERM)
        elif self.term_sent and now - self.cancel_at > 2 * grace:
            self._kill()

    def _report_error(self, line: dict[str, Any]) -> None:
        start = self.start
        self.errors_reported += 1
        message = str(line.get("message") or "A training process reported an error.")
        data = {
            "attempt": start.attempt,
            "node_rank": start.node_rank,
            "code": line.get("code"),
            "param": line.get("param"),
            "suggestion": line.get("suggestion"),
            "step": line.get("step"),
        }
        with contextlib.suppress(LeaseLost):
            try:
                self.writer.event(f"Node {start.node_rank}: {message}", level=JobEvent.Level.ERROR, data=data)
            except DatabaseError:
                log.warning("job %s: %s could not record an error line", start.job_id, self.node, exc_info=True)

    def _settle(self) -> str:
        assert self.child is not None
        rc = self.child.poll()
        if self.stopped:
            return STOPPED
        if rc == protocol.EXIT_DONE:
            return FINISHED
        if rc == protocol.EXIT_STOPPED:  # the ranks honoured node 0's stop file with everyone else
            return FINISHED
        if self.errors_reported:
            return EXITED
        # Node 0 sees the lost ranks and settles the job; the reason may only be in this node's log.
        # Not for a cancel: the launcher of ranks that stopped on the stop file exits non-zero too.
        start = self.start
        data = {
            "attempt": start.attempt,
            "node_rank": start.node_rank,
            "returncode": rc,
            "log_tail": self.child.log_tail(LOG_TAIL_LINES),
        }

        def write() -> None:
            with self.writer.fenced() as cancel_requested:
                if not cancel_requested:
                    job_event_add(
                        job_id=start.job_id,
                        level=JobEvent.Level.WARNING,
                        message=f"Node {start.node_rank}'s launcher exited with code {rc}.",
                        data=data,
                    )

        with contextlib.suppress(LeaseLost, DatabaseError):
            self.writer.retry(write, what="event")
        return EXITED


def follow_in_process(*args: Any) -> str:
    """The embedded worker's follower: the same `follow_node`, on a thread beside node 0's."""
    return follow_node(FollowerStart(*args), worker_id=f"inprocess-follower@{socket.gethostname()}:{os.getpid()}")


# In embedded mode the one worker thread runs node 0 while its followers run: each follower
# message gets a thread of its own (with a broker, a worker process on each node takes it).
