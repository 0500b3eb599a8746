from __future__ import annotations

from django.apps import AppConfig

from tuninglab import dispatch
from tuninglab.task_names import FOLLOW_NODE


class WorkersConfig(AppConfig):
    name = "workers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The embedded default has no broker: messages that `tuninglab.dispatch` sends go to
        # this process's in-process worker. Imported here, not at module top, because the
        # worker imports models, which only exist once the app registry is ready.
        from workers import followers, inprocess

        # Nothing starts here: ready() also runs in `migrate`, test runs and runserver's
        # autoreloader parent. The serving process starts the worker (tuninglab/wsgi.py).
        dispatch.register_local_transport(
            dispatch.LocalTransport(submit=inprocess.submit, pending=inprocess.pending, start=inprocess.ensure_started)
        )
        # A multi-node job's follower runs beside node 0, on a thread of its own (the embedded
        # worker's one thread is busy with node 0's runner).
        dispatch.register_local_thread_task(FOLLOW_NODE, followers.follow_in_process)
