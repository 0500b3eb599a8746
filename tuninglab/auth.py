"""DRF authentication: ``Authorization: Bearer <api key>``, and its OpenAPI description.

Keys are created and revoked by ``tuninglab.services``. DRF imports this module while it
defines ``APIView`` (it is named in ``DEFAULT_AUTHENTICATION_CLASSES``), so it imports
only what cannot lead back to ``rest_framework.views``: the models and the key selector.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from tuninglab.models import ApiKey
from tuninglab.selectors import api_key_get_active


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` → the key's owner; ``request.auth`` is the ApiKey row."""

    keyword = "bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        parts = header.split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header; use 'Bearer <api key>'.")
        key = api_key_get_active(raw_key=parts[1])
        if key is None or not key.owner.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        # Coarse last-used stamp: at most one write a minute per key.
        now = timezone.now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return key.owner, key

    def authenticate_header(self, request: Any) -> str:
        # Present → DRF answers 401 (not 403) to a request without credentials.
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that ``ApiKeyAuthentication`` is HTTP Bearer, so Swagger UI offers it.

    Registered by subclassing; this module is imported whenever DRF builds the views'
    authenticators, which happens before a schema is generated.
    """

    target_class = "tuninglab.auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key (tl-…)",
            "description": "An API key from `manage.py create_api_key USER` or the admin, "
            "sent as `Authorization: Bearer <key>`.",
        }
