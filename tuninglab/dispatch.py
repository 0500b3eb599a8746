"""Send work to a worker by task name: the broker, or the in-process worker of the embedded default.

This is the port through which ``tunings`` (job create, retry, the sweeper's re-dispatch)
wakes workers without importing ``workers``: a message names its task
(``tuninglab.task_names``), and whoever consumes that name runs it.

* With a broker (``TUNINGLAB_INPROCESS_WORKER=False``): ``app.send_task(name, args, queue)``.
* Embedded (no Redis): the message goes to the *local transport* that the ``workers`` app
  registers when Django starts (``WorkersConfig.ready``), a thread in this process that the
  serving process starts at once (``start_local_worker``, from ``tuninglab/wsgi.py``). Without
  one registered (``workers`` not installed) the message cannot be delivered: it is logged
  and the job stays ``queued`` — the row is the truth — until a worker process sweeps it.
  A task registered with ``register_local_thread_task`` runs at once on a thread of its own
  instead: the embedded worker's one thread is busy with the job that sent it (a follower
  node of a multi-node job runs beside node 0).

A message is a wake-up, never the only record of work: a lost one is replaced by the
sweeper, and a duplicate finds nothing to claim.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections

from tuninglab.celery import app
from tuninglab.task_names import RUN_TUNING_JOB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTransport:
    """How the embedded worker takes messages: ``submit(task_name, args, queue)`` and ``pending(queue)``;
    ``start()`` starts it (and its sweeper) before any message arrives."""

    submit: Callable[[str, list[Any], str], None]
    pending: Callable[[str], int]
    start: Callable[[], object] | None = None


_local: LocalTransport | None = None
# Embedded mode: task name -> function that runs on a thread of its own per message.
_thread_tasks: dict[str, Callable[..., object]] = {}
_threads: list[threading.Thread] = []
_threads_lock = threading.Lock()


def register_local_transport(transport: LocalTransport | None) -> None:
    """Install (or with None remove) the embedded worker's transport; ``workers`` calls this at startup."""
    global _local
    _local = transport


def register_local_thread_task(name: str, run: Callable[..., object]) -> None:
    """In embedded mode, run each message of task ``name`` as ``run(*args)`` on a new thread, at once.

    For work that must run *while* the embedded worker's one thread runs the job that sent it
    (it would wait behind that job on the worker's queue forever). With a broker it changes
    nothing: the message goes to the queue, and a worker process runs it.
    """
    _thread_tasks[name] = run


def _run_on_thread(name: str, args: list[Any]) -> None:
    try:
        _thread_tasks[name](*args)
    except Exception:
        log.exception("in-process task %s%r crashed", name, tuple(args))
    finally:
        connections.close_all()  # this thread's own connections; nobody else closes them


def local_threads_join(timeout: float) -> bool:
    """Wait until the threads `register_local_thread_task` started have ended (True), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with _threads_lock:
        threads = list(_threads)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with _threads_lock:
        _threads[:] = [t for t in _threads if t.is_alive()]
        return not _threads


def start_local_worker() -> None:
    """Start the embedded worker now, in embedded mode; a no-op with a broker.

    The serving process calls this at startup (``tuninglab/wsgi.py``): a job that a previous
    process left ``running`` or ``queued`` is swept and resumed without waiting for a new
    submit. Management commands never import the WSGI module, so ``migrate`` or a test run
    starts no thread.
    """
    if settings.TUNINGLAB_INPROCESS_WORKER and _local is not None and _local.start is not None:
        _local.start()


def send_task(name: str, *, args: Sequence[Any], queue: str) -> None:
    """Send task ``name`` with ``args`` to ``queue``.

    Raises:
        RuntimeError: embedded mode with no local transport registered.
        Exception: whatever the broker client raises when the broker is unreachable.
    """
    if settings.TUNINGLAB_INPROCESS_WORKER:
        if name in _thread_tasks:
            thread = threading.Thread(
                target=_run_on_thread, args=(name, list(args)), name=f"tuninglab-{name}", daemon=True
            )
            with _threads_lock:
                _threads[:] = [t for t in _threads if t.is_alive()]
                _threads.append(thread)
            thread.start()
            return
        if _local is None:
            raise RuntimeError("no in-process worker is registered (is 'workers' in INSTALLED_APPS?)")
        _local.submit(name, list(args), queue)
        return
    # Nothing reads task results; without ignore_result the first send of a web process while
    # Redis is down also waits on the result backend (20 retries of 1 s) before it fails.
    app.send_task(name, args=list(args), queue=queue, ignore_result=True)


def dispatch_tuning_job(job_id: str, queue: str = "cpu") -> None:
    """Wake a worker of ``queue`` for ``job_id``. Never raises: the job row is the truth.

    If the broker is down (or no worker is registered) the job stays ``queued`` and the
    next sweep dispatches it.
    """
    try:
        send_task(RUN_TUNING_JOB, args=[job_id], queue=queue)
    except Exception:
        log.exception("could not dispatch job %s to queue %s; it stays queued for the sweeper", job_id, queue)


def pending_wakeups(queue: str) -> int:
    """Messages waiting (not yet taken by a worker) on ``queue``; 0 when unknown."""
    if settings.TUNINGLAB_INPROCESS_WORKER:
        return _local.pending(queue) if _local is not None else 0
    try:
        with app.connection_for_read() as conn:
            _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
            return int(count)
    except Exception:
        # Redis reports a queue with no messages as missing: nothing pending.
        return 0
