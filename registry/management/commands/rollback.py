"""``manage.py rollback OWNER NAME [--to VERSION] [--alias production] [--reason TEXT]``.

Without ``--to``: back to the version that held the alias before (twice walks two steps
back; nothing earlier is an error, exit code 1). The target passes the pre-promotion check
first (``registry.services.aliases.model_rollback``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from registry.management.command_helpers import command_error, move_text, owner_by_username
from registry.services.aliases import DEFAULT_ALIAS, model_rollback
from tuninglab.errors import ApiError


class Command(BaseCommand):
    help = "Move an alias (default: production) of OWNER's model NAME back to the version it held before."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("owner", help="Username of the model's owner.")
        parser.add_argument("name", help="Registered model name (per owner).")
        parser.add_argument(
            "--to", dest="to_version", type=int, default=None, help="Roll back to this version instead."
        )
        parser.add_argument("--alias", default=DEFAULT_ALIAS, help="Alias to move (default: %(default)s).")
        parser.add_argument("--reason", default="", help="Why; stored on the alias event.")

    def handle(
        self,
        *args: Any,
        owner: str,
        name: str,
        to_version: int | None,
        alias: str,
        reason: str,
        **options: Any,
    ) -> None:
        user = owner_by_username(owner)
        try:
            move = model_rollback(owner=user, name=name, alias=alias, to_version=to_version, reason=reason)
        except ApiError as exc:
            raise command_error(exc) from exc
        self.stdout.write(move_text(name, move))
