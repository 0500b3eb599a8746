"""Routes for /v1/files (owned by the datasets work)."""

from __future__ import annotations

urlpatterns: list = []
