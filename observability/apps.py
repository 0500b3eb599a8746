from __future__ import annotations

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at module top: the collector reads models, which only exist once
        # the app registry is ready (the same reason as WorkersConfig.ready).
        from observability.collectors import register_once

        # Registering runs no query (describe() names the families without reading them):
        # ready() also runs in `migrate`, before the tables exist.
        register_once()
