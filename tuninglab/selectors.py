"""Platform reads: the API key a raw secret belongs to.

Imports nothing but the models on purpose: DRF imports ``tuninglab.auth`` (and so this
module) while it defines ``APIView``, so anything here that reached ``rest_framework.views``
(``tuninglab.errors`` does) would import a half-built module.
"""

from __future__ import annotations

import hashlib

from tuninglab.models import ApiKey


def hash_key(raw_key: str) -> str:
    """SHA-256 hex of the key. Keys carry 256 random bits, so a fast hash is enough (no salt needed)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_get_active(*, raw_key: str) -> ApiKey | None:
    """The unrevoked key whose secret is ``raw_key``, with its owner loaded; None when there is none."""
    return ApiKey.objects.select_related("owner").filter(key_hash=hash_key(raw_key), revoked_at__isnull=True).first()
