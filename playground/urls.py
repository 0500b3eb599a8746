"""Playground pages: chat sessions with served models, login required, owner-scoped."""

from __future__ import annotations

app_name = "playground"
urlpatterns: list = []
