"""A queued job whose input file was soft-deleted (e.g. a retry of a finished job) fails clearly."""

from __future__ import annotations

from django.utils import timezone

from tests.workers.conftest import make_training_file
from tunings.models import TuningJob
from workers.job_config import deleted_input_file, job_paths
from workers.runner import run_job


def test_it_fails_a_job_whose_training_file_was_deleted_before_spawning(fake_engine, make_job, user, settings):
    fake_engine([{"done": True}])
    job = make_job(user)
    job.training_file.deleted_at = timezone.now()
    job.training_file.save(update_fields=["deleted_at"])
    run_job(job.id, worker_id="w1", queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert job.error["code"] == "file_deleted"
    assert job.error["param"] == "training_file"
    assert job.training_file_id in job.error["message"]
    assert "Upload the dataset again" in job.suggestion
    assert not (job_paths(job.id).job_dir / "fake.pid").exists()  # no child ever ran


def test_it_names_a_deleted_validation_file(make_job, user, settings):
    validation = make_training_file(user, settings, name="valid.jsonl", content=b'{"prompt": "a", "completion": "b"}\n')
    job = make_job(user, validation_file=validation)
    assert deleted_input_file(job) is None
    validation.deleted_at = timezone.now()
    validation.save(update_fields=["deleted_at"])
    job.refresh_from_db()
    assert deleted_input_file(job) == ("validation_file", validation.id)
