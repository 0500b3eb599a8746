"""Routes for tuning jobs: seed style, resource style and OpenAI style."""

from __future__ import annotations

urlpatterns: list = []
