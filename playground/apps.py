from __future__ import annotations

from django.apps import AppConfig


class PlaygroundConfig(AppConfig):
    """A chat page on the user's served models through the gateway, kept as sessions and messages."""

    name = "playground"
    default_auto_field = "django.db.models.BigAutoField"
