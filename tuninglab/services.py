"""Platform writes: API keys (created once, the secret shown once, stored as SHA-256) and users."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tuninglab.errors import InvalidRequestError
from tuninglab.models import ApiKey
from tuninglab.selectors import hash_key

KEY_PREFIX = "tl-"


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


def user_row_lock(*, user_id: Any) -> None:
    """Lock the user's row until the current transaction ends (call inside ``transaction.atomic``).

    Per-owner limits are a count followed by a write (a claim within the concurrency limit, a
    job within the queued cap, an evaluation within the pending cap); taking this lock first
    makes two such sequences of one owner run one after the other, so neither can take the
    last place twice (PostgreSQL; SQLite serialises writers anyway).
    """
    get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk").first()
