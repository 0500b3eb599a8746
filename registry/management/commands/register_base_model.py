"""``manage.py register_base_model NAME PATH [--description TEXT]``.

Validates the local Hugging Face model directory (config, tokenizer, safetensors weights)
before anything is written, and re-points NAME when it already exists (see
``registry.services.base_models.base_model_register``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry.models import BaseModel
from registry.services.base_models import base_model_register
from tuninglab.errors import ApiError


class Command(BaseCommand):
    help = "Register a local Hugging Face model directory as a base model for tuning jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Public name, ^[a-z0-9][a-z0-9._-]{0,63}$ (e.g. llama-3.1-8b).")
        parser.add_argument("path", help="Directory with config.json, a tokenizer and *.safetensors weights.")
        parser.add_argument("--description", default="", help="Free text shown in the admin and the API.")

    def handle(self, *args: Any, name: str, path: str, description: str, **options: Any) -> None:
        existed = BaseModel.objects.filter(name=name).exists()
        try:
            model = base_model_register(name=name, path=path, description=description)
        except ApiError as exc:
            hint = f"\nHint: {exc.suggestion}" if exc.suggestion else ""
            raise CommandError(f"[{exc.code}] {exc.message}{hint}") from exc
        self.stdout.write(
            self.style.SUCCESS(f"{'Updated' if existed else 'Registered'} base model {model.name!r}: ")
            + f"{model.architecture}, {model.parameter_count:,} parameters, {model.path}"
        )
