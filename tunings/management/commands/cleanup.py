"""``manage.py cleanup [--dry-run]``: delete what finished jobs, crashes and expired keys left behind.

Finished jobs' run directories past ``TUNINGLAB_RETAIN_JOB_DIRS_DAYS``, registry ``.staging-*`` /
``.orphan-v*`` leftovers, interrupted uploads and unreferenced blobs, checkpoint rows whose
directory is gone, and idempotency records past their TTL (``tunings.services.cleanup``).
Never what a queued or running job or a registered version needs. ``--dry-run`` lists what it
would delete and how many bytes, and deletes nothing. It also runs by itself every
``TUNINGLAB_CLEANUP_SECONDS`` (beat on the maintenance queue, or the embedded worker).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tuninglab.command_progress import activity, add_progress_arguments
from tunings.services.cleanup import cleanup_run


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


class Command(BaseCommand):
    help = "Delete finished jobs' files, upload and registry leftovers, dead checkpoint rows, expired idempotency keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="List what would be deleted; delete nothing.")
        add_progress_arguments(parser)

    def handle(self, *args: Any, dry_run: bool, progress: bool | None, **options: Any) -> None:
        # Deleting large job directories can take a while, and the service reports no progress.
        with activity("cleanup", force=progress, stream=self.stderr):
            report = cleanup_run(dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        for removal in report.removals:
            self.stdout.write(f"{verb} {removal.kind} {removal.path} ({_size(removal.bytes)})")
        self.stdout.write(
            f"{verb}: {len(report.removals)} paths, {_size(report.bytes)} ({report.bytes} bytes); "
            f"{report.checkpoint_rows} checkpoint rows; {report.idempotency_records} idempotency records"
        )
