"""``manage.py promote OWNER NAME VERSION [--alias production] [--reason TEXT]``.

Runs the pre-promotion check and moves the alias (``registry.services.aliases.model_promote``).
OWNER is a username. Errors exit with code 1 and ``[code] message``; a refused check lists
every reason on its own line. ``rollback`` and ``list_versions`` share the helpers below.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry.models import ModelVersion
from registry.services.aliases import DEFAULT_ALIAS, AliasMove, model_promote
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


class Command(BaseCommand):
    help = "Point an alias (default: production) of OWNER's model NAME at VERSION, after the pre-promotion check."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("owner", help="Username of the model's owner.")
        parser.add_argument("name", help="Registered model name (per owner).")
        parser.add_argument("version", type=int, help="Version number to promote.")
        parser.add_argument("--alias", default=DEFAULT_ALIAS, help="Alias to move (default: %(default)s).")
        parser.add_argument("--reason", default="", help="Why; stored on the alias event.")

    def handle(self, *args: Any, owner: str, name: str, version: int, alias: str, reason: str, **options: Any) -> None:
        user = owner_by_username(owner)
        try:
            move = model_promote(owner=user, name=name, version=version, alias=alias, reason=reason)
        except ApiError as exc:
            raise command_error(exc) from exc
        self.stdout.write(move_text(name, move))
