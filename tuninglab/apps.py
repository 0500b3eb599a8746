from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate


def _no_statement_timeout_while_migrating(*, using: str = "default", **_kwargs: Any) -> None:
    """`migrate` may rebuild a big table for minutes: lift the statement timeout on its connection only."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")


def _statement_timeout_back_after_migrating(*, using: str = "default", **_kwargs: Any) -> None:
    """Back to the connection's own default (its startup options) once the migrations ran."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")


class TuninglabConfig(AppConfig):
    name = "tuninglab"
    verbose_name = "Platform (API keys, idempotency)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Sent before any migration runs (once per app: the SET is idempotent).
        pre_migrate.connect(_no_statement_timeout_while_migrating, dispatch_uid="tuninglab-migrate-no-timeout")
        # A process that goes on after migrate (the test runner, the demo) keeps the bound.
        post_migrate.connect(_statement_timeout_back_after_migrating, dispatch_uid="tuninglab-migrate-timeout-back")
