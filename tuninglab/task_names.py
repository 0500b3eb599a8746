"""Names of the Celery tasks that lower layers start without importing the module that defines them.

``tunings`` queues a job and must wake a worker, but the task lives in ``workers`` (an outer
layer nothing imports). Celery can send a task by name, so the name is the contract: the
``workers.tasks`` module registers its tasks under these names, the Celery app routes and
schedules them, and ``tuninglab.dispatch`` sends them.
"""

from __future__ import annotations

RUN_TUNING_JOB = "workers.tasks.run_tuning_job"
SWEEP_EXPIRED_LEASES = "workers.tasks.sweep_expired_leases"
RUN_EVALUATION = "workers.tasks.run_evaluation"
RUN_COMPARISON = "workers.tasks.run_comparison"
SYNC_REGISTRY = "workers.tasks.sync_registry"
CLEANUP = "workers.tasks.cleanup"
# Node k > 0 of a multi-node job's attempt (workers.followers).
FOLLOW_NODE = "workers.tasks.follow_node"
