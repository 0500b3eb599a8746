"""``manage.py promote OWNER NAME VERSION [--alias production] [--reason TEXT]``.

Runs the pre-promotion check and moves the alias (``registry.services.aliases.model_promote``).
OWNER is a username. Errors exit with code 1 and ``[code] message``; a refused check lists
every reason on its own line. The helpers the registry commands share live in ``registry.management.command_helpers``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from registry.management.command_helpers import command_error, move_text, owner_by_username
from registry.services.aliases import DEFAULT_ALIAS, model_promote
from tuninglab.errors import ApiError


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
