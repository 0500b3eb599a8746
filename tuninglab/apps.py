from __future__ import annotations

from django.apps import AppConfig


class TuninglabConfig(AppConfig):
    name = "tuninglab"
    verbose_name = "Platform (API keys, idempotency)"
    default_auto_field = "django.db.models.BigAutoField"
