"""Prefixed random string ids (``file-…``, ``ftjob-…``), OpenAI style."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """Return ``<prefix>-<24 hex chars>``: 96 random bits, unguessable across owners."""
    return f"{prefix}-{secrets.token_hex(12)}"
