"""Web pages: jobs and models, login required, owner-scoped."""

from __future__ import annotations

app_name = "webui"
urlpatterns: list = []
