"""``manage.py list_versions OWNER NAME``: the versions of one owner's model, newest first.

Columns: version, kind, created (UTC), aliases pointing at it, base model, sha256 prefix,
final training loss and the latest evaluation's metrics.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from registry.management.command_helpers import command_error, owner_by_username
from registry.selectors import model_version_list, registered_model_get
from tuninglab.errors import ApiError

COLUMNS = ("VERSION", "KIND", "CREATED", "ALIASES", "BASE", "SHA256", "FINAL LOSS", "EVAL")
SHA_PREFIX = 12
# The evaluation summary shows its first few numeric metrics by name (PostgreSQL's jsonb does not
# keep the order keys were stored in, so by name is the one order both databases give).
EVAL_METRICS_SHOWN = 4


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number and math.isfinite(value) else None


def _eval_summary(evaluation: dict[str, Any]) -> str:
    metrics = evaluation.get("metrics") if isinstance(evaluation.get("metrics"), dict) else evaluation
    shown = [(k, v) for k, raw in sorted(metrics.items()) if (v := _number(raw)) is not None][:EVAL_METRICS_SHOWN]
    return " ".join(f"{k}={v:.4g}" for k, v in shown) or "-"


class Command(BaseCommand):
    help = "List the versions of OWNER's registered model NAME with their aliases, losses and evaluation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("owner", help="Username of the model's owner.")
        parser.add_argument("name", help="Registered model name (per owner).")

    def handle(self, *args: Any, owner: str, name: str, **options: Any) -> None:
        user = owner_by_username(owner)
        try:
            registered = registered_model_get(owner=user, name=name)
        except ApiError as exc:
            raise command_error(exc) from exc
        rows = []
        for version in model_version_list(registered_model=registered):
            loss = _number(version.metrics.get("final_loss"))
            rows.append(
                (
                    f"v{version.version}",
                    version.kind,
                    version.created_at.strftime("%Y-%m-%d %H:%M"),
                    ",".join(sorted(a.alias for a in version.aliases.all())) or "-",
                    version.base_model.name,
                    version.sha256[:SHA_PREFIX] or "-",
                    f"{loss:.4f}" if loss is not None else "-",
                    _eval_summary(version.evaluation or {}),
                )
            )
        if not rows:
            self.stdout.write(f"{name} has no versions.")
            return
        widths = [max(len(row[i]) for row in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
        for row in (COLUMNS, *rows):
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
