"""Tell workers about registry changes by task name, after the change commits (no worker import).

The web process never talks to MLflow or loads a model: an alias move or a new version
commits its rows, and these functions send the task that mirrors it to MLflow
(``SYNC_REGISTRY``) or runs an evaluation (``RUN_EVALUATION`` / ``RUN_COMPARISON``).
A message that is lost changes nothing that matters: the rows say what is pending, and
``manage.py registry_sync`` (or the next sync) catches up.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from tuninglab import dispatch
from tuninglab.task_names import RUN_COMPARISON, RUN_EVALUATION, SYNC_REGISTRY

log = logging.getLogger(__name__)
# Registry follow-ups (MLflow mirror) run on the CPU queue; evaluations choose their own.
SYNC_QUEUE = "cpu"


def _send_after_commit(name: str, args: list[str], queue: str) -> None:
    def send() -> None:
        try:
            dispatch.send_task(name, args=args, queue=queue)
        except Exception:
            log.exception("could not send %s%s to %s; the rows stay pending", name, args, queue)

    transaction.on_commit(send)


def request_registry_sync() -> None:
    """Mirror pending registry rows to MLflow soon (no-op when MLflow is off)."""
    if settings.TUNINGLAB["MLFLOW_ENABLED"]:
        _send_after_commit(SYNC_REGISTRY, [], SYNC_QUEUE)


def request_evaluation(*, evaluation_id: str, queue: str) -> None:
    """Run a queued evaluation on a worker of ``queue``."""
    _send_after_commit(RUN_EVALUATION, [evaluation_id], queue)


def request_comparison(*, comparison_id: str, queue: str) -> None:
    """Run a queued comparison on a worker of ``queue``."""
    _send_after_commit(RUN_COMPARISON, [comparison_id], queue)
