"""``/metrics`` (the route name is django-prometheus's, which the URL-conf walk test lists)."""

from __future__ import annotations

from django.urls import path

from observability.views import metrics_view

urlpatterns = [path("metrics", metrics_view, name="prometheus-django-metrics")]
