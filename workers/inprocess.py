"""The embedded worker: a thread in the web/CLI process that runs the same ``run_job``.

With no Redis (``TUNINGLAB_INPROCESS_WORKER=True``, the default without ``REDIS_URL``)
``tuninglab.dispatch`` puts each message (task name, args, queue) on an in-memory queue that
this thread drains one job at a time (``WorkersConfig.ready`` registers ``submit``/``pending``
as the embedded transport). The serving process starts it at startup (``tuninglab/wsgi.py`` →
``tuninglab.dispatch.start_local_worker`` → ``ensure_started``); it sweeps at once and then
when idle (and at least every ``SWEEP_SECONDS``), so a job left ``running`` by a previous
process is re-queued and resumed here without waiting for a new submit. When idle it also runs
the cleanup (``manage.py cleanup``) every ``CLEANUP_SECONDS``, as beat does with Celery. Everything else —
claim, lease, fencing, child process, relay — is exactly the Celery path.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from django.db import connections

from registry.evaluation.runner import comparison_run, evaluation_run
from tuninglab.celery import CLEANUP_SECONDS, SWEEP_SECONDS
from tuninglab.task_names import (
    CLEANUP,
    RUN_COMPARISON,
    RUN_EVALUATION,
    RUN_TUNING_JOB,
    SWEEP_EXPIRED_LEASES,
    SYNC_REGISTRY,
)
from tunings.services.cleanup import cleanup_run
from workers.runner import run_job, worker_identity
from workers.sweeper import sweep

log = logging.getLogger(__name__)

_STOP = object()
# The tasks this worker runs besides training jobs, by name (as the Celery worker registers them).
_HANDLERS = {
    SWEEP_EXPIRED_LEASES: lambda: sweep(),
    RUN_EVALUATION: lambda evaluation_id: evaluation_run(evaluation_id=evaluation_id),
    RUN_COMPARISON: lambda comparison_id: comparison_run(comparison_id=comparison_id),
    SYNC_REGISTRY: lambda: _sync_registry(),
    CLEANUP: lambda: cleanup_run(),
}
_lock = threading.Lock()
_queue: queue.Queue = queue.Queue()
_thread: threading.Thread | None = None


def _sync_registry() -> None:
    # Late: registry.services.mlflow_sync imports mlflow (~0.9 s and ~150 MB with pandas). Every
    # Django process imports this module (WorkersConfig.ready registers the embedded transport),
    # and only a process that actually runs a sync should pay for mlflow.
    from registry.services.mlflow_sync import registry_sync

    registry_sync()


def _cleanup() -> None:
    try:
        cleanup_run()
    except Exception:
        log.exception("in-process cleanup failed")
    finally:
        connections.close_all()


def submit(task_name: str, args: list[Any], queue_name: str = "cpu") -> None:
    """Queue a message for the embedded worker (starting it on first use).

    Raises:
        ValueError: a task name this worker does not run (a bug in the sender, not a lost job).
    """
    if task_name not in (RUN_TUNING_JOB, *_HANDLERS):
        raise ValueError(f"the in-process worker does not run task {task_name!r}")
    ensure_started()
    _queue.put((task_name, list(args), queue_name))


def pending(queue_name: str | None = None) -> int:
    """Messages not yet taken (one in-memory queue serves every queue name)."""
    return _queue.qsize()


def ensure_started() -> threading.Thread:
    """Start the worker thread unless it runs (at server start, and again on a submit if it died)."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="tuninglab-inprocess-worker", daemon=True)
            _thread.start()
            log.info("in-process worker started in pid %s", os.getpid())
        return _thread


def stop(timeout: float = 30.0) -> None:
    """Stop the thread after the job it is running (tests, shutdown)."""
    global _thread
    with _lock:
        thread = _thread
        _thread = None
    if thread is not None and thread.is_alive():
        _queue.put(_STOP)
        thread.join(timeout)


def wait_idle(timeout: float) -> bool:
    """Block until every submitted wake-up was handled (True) or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _queue.unfinished_tasks == 0:
            return True
        time.sleep(0.1)
    return _queue.unfinished_tasks == 0


def run_forever() -> None:
    """Run the worker loop in the calling thread (``manage.py run_worker``).

    The calling thread registers as *the* worker, so wake-ups this process sends itself
    (the sweeper's) go to this loop instead of starting a second thread.
    """
    global _thread
    with _lock:
        if _thread is not None and _thread.is_alive():
            raise RuntimeError("an in-process worker already runs in this process")
        _thread = threading.current_thread()
    try:
        _loop()
    finally:
        with _lock:
            _thread = None


def _loop() -> None:
    worker_id = worker_identity("inprocess")
    # Sweep first thing: at startup a previous process may have left jobs running or queued.
    last_sweep = float("-inf")
    last_cleanup = float("-inf")
    while True:
        if time.monotonic() - last_sweep >= SWEEP_SECONDS:
            last_sweep = time.monotonic()
            try:
                sweep()
            except Exception:
                log.exception("in-process sweep failed")
            finally:
                connections.close_all()
        try:
            item = _queue.get(timeout=SWEEP_SECONDS)
        except queue.Empty:
            # Idle: the cleanup's disk walk never delays a job.
            if time.monotonic() - last_cleanup >= CLEANUP_SECONDS:
                last_cleanup = time.monotonic()
                _cleanup()
            continue
        try:
            if item is _STOP:
                return
            task_name, args, queue_name = item
            if task_name == RUN_TUNING_JOB:
                run_job(args[0], worker_id=worker_id, queue=queue_name)
            else:
                _HANDLERS[task_name](*args)
        except Exception:
            log.exception("in-process worker: job %s crashed", item)
        finally:
            _queue.task_done()
            connections.close_all()
