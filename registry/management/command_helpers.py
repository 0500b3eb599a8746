"""What the registry's management commands share: the owner named on the command line, how a
refused request is printed (``[code] message``, one line per reason of a refused check, then
the hint), and how an alias move is reported."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from registry.models import ModelVersion
from registry.services.aliases import AliasMove
from registry.services.checks import FULL_WEIGHTS_NOTE, VersionNotServableError
from tuninglab.errors import ApiError


def owner_by_username(username: str) -> Any:
    """The user named ``username``, or a CommandError ``[owner_not_found]``."""
    owner = get_user_model().objects.filter(username=username).first()
    if owner is None:
        raise CommandError(f"[owner_not_found] No user {username!r}.")
    return owner


def command_error(exc: ApiError) -> CommandError:
    """``[code] message`` (one line per reason of a refused check), then the hint."""
    if isinstance(exc, VersionNotServableError):
        text = f"[{exc.code}] {exc.summary}:" + "".join(f"\n  - [{p.code}] {p.message}" for p in exc.problems)
    else:
        text = f"[{exc.code}] {exc.message}"
    if exc.suggestion:
        text += f"\nHint: {exc.suggestion}"
    return CommandError(text)


def move_text(name: str, move: AliasMove) -> str:
    """What a move did, e.g. ``support-bot@production: v1 -> v2 (promote)``."""
    alias = move.alias
    if move.event is None:
        return f"{name}@{alias.alias} already points at v{alias.version.version}; nothing moved."
    before = f"v{move.event.from_version.version}" if move.event.from_version else "(unset)"
    text = (
        f"{name}@{alias.alias}: {before} -> v{move.event.to_version.version} ({move.event.kind}, event {move.event.pk})"
    )
    if move.event.to_version.kind == ModelVersion.Kind.FULL:
        text += f"\nNote: v{move.event.to_version.version} {FULL_WEIGHTS_NOTE}"
    return text
