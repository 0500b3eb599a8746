from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tunings", "0006_job_distributed"),
    ]

    operations = [
        migrations.AddField(
            model_name="tuningjob",
            name="memory_estimate",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
