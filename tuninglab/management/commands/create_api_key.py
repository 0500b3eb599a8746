"""``manage.py create_api_key USERNAME [--name NAME]``: a new API key, printed once.

The key is printed alone on the last line so scripts can take it with ``| tail -n 1``;
everything before it is for humans. Only its SHA-256 is stored.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from tuninglab.errors import ApiError
from tuninglab.services import api_key_create, user_get_or_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user when missing). Prints the key on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key, e.g. 'laptop' or 'ci'.")

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        if len(name) > 100:
            raise CommandError("--name must be at most 100 characters.")
        existed = get_user_model().objects.filter(username=username).exists()
        try:
            with transaction.atomic():
                user = user_get_or_create(username=username)
                row, raw = api_key_create(owner=user, name=name)
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{'Using existing' if existed else 'Created'} user {user.username!r}.")
        label = f" {row.name!r}" if row.name else ""
        self.stdout.write(
            f"API key{label} {row.prefix}… created (id {row.pk}). It is shown only now; store it securely:"
        )
        self.stdout.write(raw)
