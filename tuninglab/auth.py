"""API keys: created once (the secret is shown once), stored as SHA-256, sent as ``Bearer``."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from tuninglab.models import ApiKey

KEY_PREFIX = "tl-"


def hash_key(raw_key: str) -> str:
    """SHA-256 hex of the key. Keys carry 256 random bits, so a fast hash is enough (no salt needed)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, owner: Any, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for ``owner``; returns (row, raw key). The raw key is never stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(owner=owner, name=name, prefix=raw[:10], key_hash=hash_key(raw))
    return row, raw


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key; requests with it answer 401 from now on. Revoking twice keeps the first time."""
    # Conditional UPDATE: two admins revoking at once both succeed and the first stamp wins.
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db(fields=["revoked_at"])
    return key


def user_get_or_create(*, username: str) -> Any:
    """Return the user named ``username``, creating it (with no usable password) when missing.

    Raises InvalidRequestError for a name Django's username rules reject, so a typo in an
    operator command does not create a user that can never be typed again.
    """
    # Late import: tuninglab.errors imports rest_framework.views, which imports the
    # authentication classes named in settings, i.e. this module.
    from tuninglab.errors import InvalidRequestError

    try:
        UnicodeUsernameValidator()(username)
    except ValidationError as exc:
        raise InvalidRequestError(
            f"Invalid username {username!r}: {' '.join(exc.messages)}", code="invalid_username", param="username"
        ) from exc
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is not None:
        return user
    try:
        # The savepoint lets a concurrent creator win without breaking the caller's transaction.
        with transaction.atomic():
            # password=None stores an unusable password: API keys only until an operator sets one.
            return User.objects.create_user(username=username, password=None)
    except IntegrityError:
        return User.objects.get(username=username)


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
        key = (
            ApiKey.objects.select_related("owner").filter(key_hash=hash_key(parts[1]), revoked_at__isnull=True).first()
        )
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
