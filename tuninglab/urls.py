"""Root URL map. Each app contributes its own url module."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.defaults import page_not_found, server_error
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tuninglab.apis import HealthApi
from tuninglab.errors import InternalServerError, NotFoundError

# Paths the API answers under; an unknown one gets the API's error body, not an HTML page.
_API_PREFIXES = ("/v1/", "/generate", "/api/")


def not_found(request: HttpRequest, exception: Any = None) -> HttpResponse:
    """404 for a URL no route matches (e.g. an id with characters ids never have).

    API clients get the one error shape (``tuninglab.errors``) they parse everywhere else; the
    admin and other pages keep Django's HTML page.
    """
    if not request.path.startswith(_API_PREFIXES):
        return page_not_found(request, exception)
    error = NotFoundError(f"No such route: {request.path}.")
    return JsonResponse({"error": error.as_dict()}, status=error.status)


def failed(request: HttpRequest) -> HttpResponse:
    """500 for an uncaught exception: the error shape for API clients (details go to the log and,
    when configured, to the admins' e-mail; never to the caller), Django's page elsewhere."""
    if not request.path.startswith(_API_PREFIXES):
        return server_error(request)
    error = InternalServerError("The server failed to answer; the error is logged.")
    return JsonResponse({"error": error.as_dict()}, status=error.status)


handler404 = not_found
handler500 = failed

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", HealthApi.as_view(), name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("tunings.file_urls")),
    path("", include("tunings.job_urls")),
    path("", include("registry.urls")),
    path("", include("inference.urls")),
    path("", include("observability.urls")),
    # Login for the web pages; no password reset by e-mail (no mail server is assumed): an
    # operator sets a password with `manage.py changepassword <user>`.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("", include("webui.urls")),
    path("playground/", include("playground.urls")),
]
