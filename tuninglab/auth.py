"""API keys: created once (the secret is shown once), stored as SHA-256, sent as ``Bearer``."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
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
    """Revoke a key; requests with it answer 401 from now on."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def user_get_or_create(*, username: str) -> Any:
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` → the key's owner; ``request.auth`` is the ApiKey row."""

    keyword = "bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() != self.keyword:
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
        return 'Bearer realm="api"'
