"""A tiny urlconf for auth/throttle tests: one authenticated DRF view + the health check.

It uses the project's default authentication, permission and throttle classes, so it
behaves like every real API view without depending on their business logic.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from tuninglab.apis import HealthApi


class WhoAmIApi(APIView):
    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response({"username": request.user.username, "key_id": getattr(request.auth, "pk", None)})


urlpatterns = [
    path("test/whoami", WhoAmIApi.as_view()),
    path("healthz", HealthApi.as_view()),
]
