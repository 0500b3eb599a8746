"""The one Celery app: settings from Django (namespace ``CELERY``), tasks autodiscovered.

Training queues (``QUEUE_NAMES``): ``gpu`` and ``cpu``. A job's ``resources`` choose its queue
(``{"gpus": n > 0}`` → ``gpu``, else ``cpu``; the jobs service stores it in ``TuningJob.queue``).
GPU hosts run ``celery -A tuninglab worker -Q gpu``, CPU hosts ``-Q cpu``.

The ``maintenance`` queue (``MAINTENANCE_QUEUE``) carries the beat tasks: the lease sweep and the
registry sync. A training worker runs one job for hours at concurrency 1, so a sweep queued
behind it would wait for the very job it should rescue, and a GPU-only deployment would never
sweep at all. One small worker serves it: ``celery -A tuninglab worker -Q maintenance
--concurrency 1``. It is not a training queue: nothing dispatches jobs to it.

Delivery is at-least-once and we rely on the database, not the broker, for exactly-once
execution:

* ``task_acks_late`` + ``task_reject_on_worker_lost`` (settings): a message is acked only
  after the task returns, so a worker that dies mid-job gives its message back.
* ``worker_prefetch_multiplier = 1``: a busy worker does not hoard wake-ups another idle
  worker could run.
* ``visibility_timeout`` (``TUNINGLAB_VISIBILITY_TIMEOUT``, default 3600 s): Redis hands an
  unacked message to another consumer after this long. Training often runs longer, so a
  redelivery *will* happen. It is harmless: the message is only a wake-up, the claim is a
  conditional UPDATE (``queued → running``) on the job row, and a running job is not
  ``queued`` — the redelivered task finds nothing to claim and returns (see
  ``docs/architecture.md``). The restore scan runs every ``TUNINGLAB_UNACKED_RESTORE_INTERVAL``
  seconds (kombu's default is ~100 s); tests lower both to see a redelivery in seconds.

Beat sends to ``maintenance``: ``workers.tasks.sweep_expired_leases`` every
``TUNINGLAB_SWEEP_SECONDS`` (default 15 s; the message expires after ``SWEEP_EXPIRES_SECONDS``):
expired leases go back to ``queued`` (or ``failed`` past the attempt cap) and queued jobs
without a pending wake-up get one; and ``workers.tasks.sync_registry`` every
``TUNINGLAB_REGISTRY_SYNC_SECONDS`` (default 300 s): registry rows MLflow missed (it was down)
are mirrored; and ``workers.tasks.cleanup`` every ``TUNINGLAB_CLEANUP_SECONDS`` (default 3600 s):
finished jobs' directories past ``TUNINGLAB_RETAIN_JOB_DIRS_DAYS`` and other leftovers are
deleted (``manage.py cleanup``; the embedded worker runs it when idle at the same period).
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

from tuninglab.env import env_float, env_int
from tuninglab.task_names import CLEANUP, SWEEP_EXPIRED_LEASES, SYNC_REGISTRY

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuninglab.settings")

# The training queues: jobs and evaluations go to these, and the sweeper's re-dispatch loops over them.
QUEUE_NAMES = ("cpu", "gpu")
MAINTENANCE_QUEUE = "maintenance"
SWEEP_SECONDS = env_float("TUNINGLAB_SWEEP_SECONDS", 15.0)
# How long a sweep message may wait for the maintenance worker. One period (the old value) drops
# it whenever that worker is busy a little longer than a period — a registry sync that waits on
# an MLflow timeout, a slow sweep — and drops it silently, every time, for as long as that lasts.
# A stale sweep is harmless (idempotent: it reads the rows as they are when it runs) and cheap,
# so let it wait minutes; the bound only keeps a maintenance worker that was stopped for hours
# from coming back to a long run of back-to-back sweeps (expired ones are discarded unrun).
SWEEP_EXPIRES_SECONDS = max(300.0, 10 * SWEEP_SECONDS)
# A registry sync that finds nothing pending does not contact MLflow: cheap to run often, and it
# is what catches MLflow up after an outage without anyone running `registry_sync` by hand.
REGISTRY_SYNC_SECONDS = env_float("TUNINGLAB_REGISTRY_SYNC_SECONDS", 300.0)
# Cleanup (finished jobs' directories, leftovers, expired keys): its cutoffs are days and hours,
# so hourly is often enough; a missed run only leaves files a little longer.
CLEANUP_SECONDS = env_float("TUNINGLAB_CLEANUP_SECONDS", 3600.0)

app = Celery("tuninglab")
app.config_from_object("django.conf:settings", namespace="CELERY")

# `app.conf.X = ...` before the app is configured is stored as an override on top of the
# Django settings (the documented Celery/Django pattern); nothing here reads settings yet.
app.conf.task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (*QUEUE_NAMES, MAINTENANCE_QUEUE)
)
app.conf.task_routes = {name: {"queue": MAINTENANCE_QUEUE} for name in (SWEEP_EXPIRED_LEASES, SYNC_REGISTRY, CLEANUP)}
app.conf.beat_schedule = {
    "sweep-expired-leases": {
        "task": SWEEP_EXPIRED_LEASES,
        "schedule": SWEEP_SECONDS,
        "options": {"expires": SWEEP_EXPIRES_SECONDS},
    },
    "sync-registry": {
        "task": SYNC_REGISTRY,
        "schedule": REGISTRY_SYNC_SECONDS,
        "options": {"expires": REGISTRY_SYNC_SECONDS},
    },
    "cleanup": {
        "task": CLEANUP,
        "schedule": CLEANUP_SECONDS,
        "options": {"expires": CLEANUP_SECONDS},
    },
}


@app.on_after_configure.connect
def _tune_redis_restore(sender: Celery, **_: object) -> None:
    """Merge kombu's unacked-restore knobs into the transport options from settings.

    kombu scans for messages older than the visibility timeout every
    ``interval * throttle`` seconds (10 * 10 by default). With a short visibility timeout
    (tests, small deployments) that scan must run as often, or a redelivery waits ~100 s.
    """
    options = dict(sender.conf.broker_transport_options or {})
    options.setdefault("unacked_restore_interval", env_int("TUNINGLAB_UNACKED_RESTORE_INTERVAL", 10))
    options.setdefault("unacked_restore_throttle", env_int("TUNINGLAB_UNACKED_RESTORE_THROTTLE", 10))
    sender.conf.broker_transport_options = options


app.autodiscover_tasks()
