"""Prometheus metrics of a Celery worker, served on the worker's own port.

The web target (``/metrics``) reports what workers did to jobs from the database. What only the
worker process knows is here: tasks started, succeeded and failed per task name and how long
they took, the jobs running in this worker right now, how long the engine's checkpoints took to
write, and the memory of the worker and its training children.

**Serving.** With ``TUNINGLAB_WORKER_METRICS_PORT`` set (default: unset, nothing is served),
the worker's main process starts prometheus_client's HTTP server on that port at
``worker_init`` (on ``TUNINGLAB_WORKER_METRICS_HOST``, ``127.0.0.1`` by default). One port per
worker: give each worker on a host its own, and list them all in ``deploy/prometheus.yml``.
A port per worker rather than the web process' multiprocess directory because workers run on
other hosts than the web process, and a worker's numbers should survive a gunicorn restart
(which empties that directory).

**Pools.** Task signals fire in the process that runs the task. With ``--pool solo`` or
``threads`` that is the main process and nothing more is needed. With the prefork pool (the
default) tasks run in pool processes: set ``PROMETHEUS_MULTIPROC_DIR`` for the worker to a
directory of its own (not gunicorn's) and the main process serves the merge of every pool
process' files; files of processes that no longer run (an earlier run's) are deleted at start.

``connect_signals()`` (called by ``workers.tasks``, which every worker imports) wires it up.

docs/observability.md lists the metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from tuninglab.env import env_int, env_str

log = logging.getLogger(__name__)

# Training tasks run for hours, maintenance tasks for milliseconds: the buckets span both.
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
# A LoRA adapter checkpoint takes milliseconds, a full fine-tune's optimizer state minutes.
CHECKPOINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

TASKS_STARTED = Counter("tuninglab_worker_tasks_started", "Celery tasks started, per task name.", ["task"])
TASKS_SUCCEEDED = Counter("tuninglab_worker_tasks_succeeded", "Celery tasks that returned, per task name.", ["task"])
TASKS_FAILED = Counter("tuninglab_worker_tasks_failed", "Celery tasks that raised, per task name.", ["task"])
TASK_SECONDS = Histogram(
    "tuninglab_worker_task_duration_seconds",
    "Wall time of a Celery task from start to end, per task name.",
    ["task"],
    buckets=TASK_BUCKETS,
)
# livesum: in multiprocess mode a dead pool process' jobs stop counting.
JOBS_RUNNING = Gauge(
    "tuninglab_worker_jobs_running",
    "Tuning jobs this process is running now, per queue.",
    ["queue"],
    multiprocess_mode="livesum",
)
CHECKPOINT_SECONDS = Histogram(
    "tuninglab_worker_checkpoint_write_seconds",
    "Time the training child took to write a checkpoint (its metrics line to its checkpoint line), per queue.",
    ["queue"],
    buckets=CHECKPOINT_BUCKETS,
)

# task id -> monotonic start; a task's signals all fire in the process that runs it.
_started: dict[str, float] = {}
# The running server, and whether the default registry has the descendants collector yet.
_state: dict[str, Any] = {}


def task_name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


def _on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    TASKS_STARTED.labels(task_name(task)).inc()
    if task_id:
        _started[task_id] = time.monotonic()


def _on_task_postrun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id else None
    if started is not None:
        TASK_SECONDS.labels(task_name(task)).observe(time.monotonic() - started)


def _on_task_success(sender: Any = None, **_: Any) -> None:
    TASKS_SUCCEEDED.labels(task_name(sender)).inc()


def _on_task_failure(sender: Any = None, **_: Any) -> None:
    TASKS_FAILED.labels(task_name(sender)).inc()


@contextmanager
def job_running(queue: str) -> Iterator[None]:
    """Count a job as running on this worker for the duration of the block."""
    gauge = JOBS_RUNNING.labels(queue or "unknown")
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def observe_checkpoint_write(queue: str, seconds: float) -> None:
    CHECKPOINT_SECONDS.labels(queue or "unknown").observe(max(seconds, 0.0))


def _rss_bytes(pid: int, page_size: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * page_size


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (pool processes, training children and their ranks)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:  # exited while we read
            continue
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class DescendantsCollector:
    """Resident memory of this process' descendants, read from ``/proc`` at scrape time.

    The training child is a separate process (``python -m lora_engine.train``, or torchrun and
    its ranks), so the worker's own ``process_resident_memory_bytes`` does not include the
    model. Linux only: elsewhere (no ``/proc``) the family is empty.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def collect(self) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "tuninglab_worker_descendants_resident_memory_bytes",
            "Resident memory of the worker's child processes (pool processes, training children and their ranks).",
        )
        count = GaugeMetricFamily(
            "tuninglab_worker_descendant_processes", "Live child processes of the worker (any depth)."
        )
        if Path("/proc").is_dir():
            total, alive = 0, 0
            for pid in _descendants(self.pid):
                try:
                    total += _rss_bytes(pid, self.page_size)
                    alive += 1
                except OSError:
                    continue
            memory.add_metric([], total)
            count.add_metric([], alive)
        yield memory
        yield count


def metrics_port() -> int:
    """``TUNINGLAB_WORKER_METRICS_PORT``, 0 when unset (no server)."""
    return env_int("TUNINGLAB_WORKER_METRICS_PORT", 0)


def serving_registry() -> CollectorRegistry:
    """What the worker's port answers: this process' registry, or the merge of the pool's files."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not directory:
        # The default registry already has the process collector; add ours once per process.
        if not _state.get("descendants_registered"):
            REGISTRY.register(DescendantsCollector())
            _state["descendants_registered"] = True
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    # Process metrics are per process and absent from the merged files: the main process' own.
    ProcessCollector(registry=registry)
    registry.register(DescendantsCollector())
    return registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_dead_process_files(directory: Path) -> list[Path]:
    """Delete the multiprocess files of processes that no longer run (an earlier run's).

    Not the whole directory, as gunicorn.conf.py does before any worker exists: this process
    already wrote its own files (metrics created at import) and keeps them open.
    """
    directory.mkdir(parents=True, exist_ok=True)
    removed = []
    for path in directory.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def start_worker_metrics_server(port: int, *, host: str = "127.0.0.1") -> int:
    """Serve the worker's metrics on ``host:port`` (0: a free port); returns the bound port."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory:
        remove_dead_process_files(Path(directory))
    server, thread = start_http_server(port, addr=host, registry=serving_registry())
    _state.update(server=server, thread=thread)
    return int(server.server_address[1])


def stop_worker_metrics_server() -> None:
    server = _state.pop("server", None)
    if server is not None:
        server.shutdown()
        server.server_close()


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    port = metrics_port()
    if not port:
        return
    pool = str(getattr(sender, "pool_cls", "") or "")
    if "solo" not in pool and "thread" not in pool and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning(
            "worker metrics: pool %s runs tasks in other processes; set PROMETHEUS_MULTIPROC_DIR to a directory "
            "of this worker's own or the task metrics stay at 0",
            pool or "prefork",
        )
    host = env_str("TUNINGLAB_WORKER_METRICS_HOST", "127.0.0.1")
    bound = start_worker_metrics_server(port, host=host)
    log.info("worker metrics on %s:%s/metrics", host, bound)


def _on_worker_process_shutdown(pid: int | None = None, **_: Any) -> None:
    # A pool process that exits: its live gauges (jobs running) leave the merged answer.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())


def connect_signals() -> None:
    """Connect the task counters and the server start to Celery's signals (idempotent)."""
    signals.task_prerun.connect(_on_task_prerun, dispatch_uid="tuninglab-metrics-prerun")
    signals.task_postrun.connect(_on_task_postrun, dispatch_uid="tuninglab-metrics-postrun")
    signals.task_success.connect(_on_task_success, dispatch_uid="tuninglab-metrics-success")
    signals.task_failure.connect(_on_task_failure, dispatch_uid="tuninglab-metrics-failure")
    signals.worker_init.connect(_on_worker_init, dispatch_uid="tuninglab-metrics-worker-init")
    signals.worker_process_shutdown.connect(_on_worker_process_shutdown, dispatch_uid="tuninglab-metrics-shutdown")
