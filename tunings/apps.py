from __future__ import annotations

from django.apps import AppConfig


class TuningsConfig(AppConfig):
    name = "tunings"
    verbose_name = "Tuning jobs"
    default_auto_field = "django.db.models.BigAutoField"
