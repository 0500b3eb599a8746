"""Keep dataset stats on the ``TrainingFile`` row instead of a sidecar file next to the bytes.

Until now the stats lived in ``DATA_DIR/files/<sha[:2]>/<sha>.stats.json``, which the API read
from disk once per listed file. This adds the column and copies every readable sidecar into it.
The sidecars are not deleted: the code no longer reads or writes them, and leaving them means
migrating back (a no-op) and running the previous code still shows the stats.
"""

import json
from pathlib import Path

from django.conf import settings
from django.db import migrations, models


def backfill_stats_from_sidecars(apps, schema_editor):
    """Copy ``<sha>.stats.json`` into ``stats`` of every row with that content and no stats yet.

    Every row gets its own copy, rows sharing a blob included. A missing or unreadable sidecar
    (collected with its blob, or never written) leaves the row's stats null, which the API shows
    as it showed a missing sidecar: ``"stats": null``.
    """
    TrainingFile = apps.get_model("tunings", "TrainingFile")
    # Read here, not at import: the setting is resolved where the migration runs.
    data_dir = Path(settings.DATA_DIR)
    pending = TrainingFile.objects.filter(stats__isnull=True)
    for sha256 in pending.values_list("sha256", flat=True).distinct().order_by().iterator():
        try:
            stats = json.loads((data_dir / "files" / sha256[:2] / f"{sha256}.stats.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stats, dict):
            pending.filter(sha256=sha256).update(stats=stats)


class Migration(migrations.Migration):
    dependencies = [
        ("tunings", "0002_trainingfile_deleted_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainingfile",
            name="stats",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.RunPython(backfill_stats_from_sidecars, migrations.RunPython.noop),
    ]
