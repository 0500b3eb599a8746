"""Root URL map. Each app contributes its own url module."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tuninglab.apis import HealthApi

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("tunings.file_urls")),
    path("", include("tunings.job_urls")),
    path("", include("registry.urls")),
    path("", include("inference.urls")),
    path("", include("django_prometheus.urls")),
]
