"""``manage.py registry_sync [--all]``: mirror every pending version, alias and evaluation to MLflow.

Prints one line per item mirrored, waiting or failed. Exits with code 1 when anything
failed (the rows stay pending with the reason in ``mlflow_error``; run it again once MLflow
answers). ``--all`` re-mirrors everything, e.g. after pointing at a new or wiped MLflow
store: what MLflow already has is found again, not duplicated.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry.services.mlflow_sync import registry_sync


class Command(BaseCommand):
    help = "Mirror pending registry rows (versions, aliases, evaluations) to MLflow; exit code 1 if any failed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all",
            action="store_true",
            dest="everything",
            help="Treat every version and alias as pending (after pointing at a new or wiped MLflow store).",
        )

    def handle(self, *args: Any, everything: bool = False, **options: Any) -> None:
        report = registry_sync(everything=everything)
        if not report.enabled:
            self.stdout.write("MLflow is off (TUNINGLAB_MLFLOW_ENABLED=false): nothing to mirror.")
            return
        self.stdout.write(f"MLflow: {report.tracking_uri}")
        for kind, lines in (
            ("version", report.versions),
            ("alias", report.aliases),
            ("evaluation", report.evaluations),
            ("waiting", report.waiting),
        ):
            for line in lines:
                self.stdout.write(f"  {kind:<10} {line}")
        for line in report.failures:
            self.stderr.write(f"  FAILED     {line}")
        mirrored = len(report.versions) + len(report.aliases) + len(report.evaluations)
        if report.failures:
            raise CommandError(
                f"{len(report.failures)} item(s) could not be mirrored to MLflow at {report.tracking_uri} "
                f"({mirrored} mirrored). They stay pending; run registry_sync again once MLflow answers."
            )
        self.stdout.write(self.style.SUCCESS(f"MLflow is up to date ({mirrored} item(s) mirrored)."))
