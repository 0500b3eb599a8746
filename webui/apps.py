from __future__ import annotations

from django.apps import AppConfig


class WebuiConfig(AppConfig):
    """Owner-scoped web pages (jobs, models) over the same selectors and services as the API."""

    name = "webui"
    default_auto_field = "django.db.models.BigAutoField"
