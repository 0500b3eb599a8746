"""``python manage.py run_worker``: the embedded worker loop in the foreground, without Celery.

For an embedded (SQLite, no Redis) deployment that wants training outside the web process.
Every ``TUNINGLAB_SWEEP_SECONDS`` it sweeps expired leases and wakes itself for queued jobs,
so jobs created by the web process are picked up without a broker. With Redis, run
``celery -A tuninglab worker -Q cpu`` (or ``-Q gpu``) and ``celery -A tuninglab beat`` instead.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from workers import inprocess


class Command(BaseCommand):
    help = "Run tuning jobs in this process (embedded mode, no Celery broker needed)."

    def handle(self, *args: Any, **opts: Any) -> None:
        settings.TUNINGLAB_INPROCESS_WORKER = True
        self.stdout.write("in-process worker running; Ctrl-C to stop")
        try:
            inprocess.run_forever()
        except KeyboardInterrupt:
            self.stdout.write("stopped")
