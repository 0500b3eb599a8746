"""The project's URL conf plus one route that raises, for the 500 page test."""

from __future__ import annotations

from django.urls import path

from tuninglab.urls import handler404, handler500  # noqa: F401
from tuninglab.urls import urlpatterns as project_urlpatterns


def boom(request):
    raise RuntimeError("a bug; DATABASE_URL=postgres://secret@db/x")


urlpatterns = [path("v1/boom", boom), path("boom", boom), *project_urlpatterns]
