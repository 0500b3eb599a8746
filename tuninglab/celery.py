"""The one Celery app: settings from Django (namespace ``CELERY``), tasks autodiscovered."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuninglab.settings")

app = Celery("tuninglab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
