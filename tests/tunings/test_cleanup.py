"""``manage.py cleanup``: deletes what finished work left behind, keeps what live jobs and versions need."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from registry.models import ModelVersion, RegisteredModel
from tuninglab.celery import CLEANUP_SECONDS, MAINTENANCE_QUEUE, app
from tuninglab.models import IdempotencyRecord
from tuninglab.task_names import CLEANUP
from tunings.models import Checkpoint, TrainingFile, TuningJob
from tunings.services.cleanup import cleanup_run
from tunings.services.files import blob_relpath
from workers import inprocess

pytestmark = pytest.mark.django_db

Status = TuningJob.Status
DAY = 24 * 3600


def age(path: Path, seconds: float) -> Path:
    """Set ``path``'s mtime ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


class Disk:
    """A data dir laid out as workers, the registry and uploads leave it; ``keep``/``gone`` lists what to expect."""

    def __init__(self, data_dir: Path, make_job, user) -> None:
        self.data = Path(data_dir)
        self.make_job = make_job
        self.user = user
        self.keep: list[Path] = []
        self.gone: list[Path] = []
        self.gone_bytes = 0

    def job(self, status: str, *, finished_days_ago: float | None, expect_gone: bool, **fields) -> TuningJob:
        finished = timezone.now() - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
        job = self.make_job(status, finished_at=finished, **fields)
        run = self.data / "jobs" / job.id / "run"
        write(self.data / "jobs" / job.id / "attempt-1.log", 100)
        write(run / "checkpoints" / "step-10" / "trainable.safetensors", 1000)
        write(run / "adapter" / "adapter_model.safetensors", 500)
        Checkpoint.objects.create(job=job, step=10, path=str(run / "checkpoints" / "step-10"))
        Checkpoint.objects.create(job=job, step=5, path=str(run / "checkpoints" / "step-5"))  # pruned by the engine
        self._expect(self.data / "jobs" / job.id, expect_gone, 1600)
        return job

    def file(self, relpath: str, size: int, *, age_s: float, expect_gone: bool) -> Path:
        path = age(write(self.data / relpath, size), age_s)
        self._expect(path, expect_gone, size)
        return path

    def dir(self, relpath: str, size: int, *, age_s: float, expect_gone: bool) -> Path:
        path = self.data / relpath
        write(path / "weights.safetensors", size)
        age(path, age_s)
        self._expect(path, expect_gone, size)
        return path

    def _expect(self, path: Path, gone: bool, size: int) -> None:
        (self.gone if gone else self.keep).append(path)
        self.gone_bytes += size if gone else 0


@pytest.fixture
def disk(settings, make_job, user):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "RETAIN_JOB_DIRS_DAYS": 7}
    return Disk(settings.DATA_DIR, make_job, user)


@pytest.fixture
def version_of(fake_base_model, user):
    def make(job: TuningJob, adapter_path: Path, *, version: int = 1, synced: bool = True) -> ModelVersion:
        registered, _ = RegisteredModel.objects.get_or_create(owner=user, name="bot")
        return ModelVersion.objects.create(
            registered_model=registered,
            owner=user,
            version=version,
            base_model=fake_base_model,
            job=job,
            adapter_path=str(adapter_path),
            mlflow_synced_at=timezone.now() if synced else None,
        )

    return make


@pytest.fixture
def populated(disk, version_of, user, settings):
    """Everything cleanup must keep, and everything it must delete."""
    d = disk
    old_done = d.job(Status.SUCCEEDED, finished_days_ago=30, expect_gone=True)
    version_of(old_done, d.data / "adapters" / str(user.id) / "bot" / "v1")
    d.job(Status.FAILED, finished_days_ago=8, expect_gone=True)
    d.job(Status.CANCELLED, finished_days_ago=9, expect_gone=True)
    # Kept: finished recently, queued, running (however old), a version's files inside the run dir
    # (an old layout), and a version MLflow has not mirrored yet (it reads the run's metrics).
    d.job(Status.SUCCEEDED, finished_days_ago=1, expect_gone=False)
    d.job(Status.QUEUED, finished_days_ago=None, expect_gone=False)
    running = d.job(Status.RUNNING, finished_days_ago=30, expect_gone=False)
    legacy = d.job(Status.SUCCEEDED, finished_days_ago=30, expect_gone=False)
    version_of(legacy, d.data / "jobs" / legacy.id / "run" / "adapter", version=2)
    unmirrored = d.job(Status.SUCCEEDED, finished_days_ago=30, expect_gone=False)
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_ENABLED": True}
    version_of(unmirrored, d.data / "adapters" / str(user.id) / "bot" / "v3", version=3, synced=False)
    # A directory whose job row is gone (its owner was deleted), old: deleted.
    age(write(d.data / "jobs" / "ftjob-gone" / "run" / "x", 300).parent.parent, 30 * DAY)
    d.gone.append(d.data / "jobs" / "ftjob-gone")
    d.gone_bytes += 300

    # Registry: versions stay; a stale staging copy and an old orphan go; a fresh staging copy stays.
    root = f"adapters/{user.id}/bot"
    d.dir(f"{root}/v1", 700, age_s=60 * DAY, expect_gone=False)
    d.dir(f"{root}/.staging-0123abcd", 400, age_s=DAY, expect_gone=True)
    d.dir(f"{root}/.staging-4567ef01", 400, age_s=60, expect_gone=False)
    d.dir(f"{root}/.orphan-v9-deadbeef", 800, age_s=30 * DAY, expect_gone=True)
    d.dir(f"{root}/.orphan-v8-cafebabe", 800, age_s=DAY, expect_gone=False)

    # Uploads: an interrupted temp file goes, one being received stays; a blob without a live
    # row goes, a live row's blob stays (however old).
    d.file("tmp/upload-aaaa.part", 50, age_s=DAY, expect_gone=True)
    d.file("tmp/upload-bbbb.part", 50, age_s=5, expect_gone=False)
    d.file(blob_relpath("a" * 64), 60, age_s=DAY, expect_gone=True)
    live = d.file(blob_relpath("b" * 64), 70, age_s=30 * DAY, expect_gone=False)
    TrainingFile.objects.create(
        owner=user,
        filename="t.jsonl",
        sha256="b" * 64,
        bytes=70,
        storage_path=blob_relpath("b" * 64),
        status="processed",
    )
    assert live.exists()

    # Idempotency records: one past the 24 h TTL, one fresh.
    for key, hours in (("old", 25), ("new", 1)):
        record = IdempotencyRecord.objects.create(
            owner=user, key=key, method="POST", path="/v1/files", request_hash="h"
        )
        IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - timedelta(hours=hours))
    d.running = running
    return d


def test_it_deletes_finished_work_and_keeps_what_live_jobs_and_versions_need(populated):
    d = populated
    report = cleanup_run()

    for path in d.gone:
        assert not path.exists(), path
    for path in d.keep:
        assert path.exists(), path
    assert report.bytes == d.gone_bytes
    assert report.as_dict() == {
        "dry_run": False,
        "bytes": d.gone_bytes,
        "job_dir": 4,
        "staging_dir": 1,
        "orphan_version_dir": 1,
        "upload_leftover": 2,
        "checkpoint_rows": 3 * 2 + 3,  # rows of deleted dirs + the pruned step-5 row of each kept finished job
        "idempotency_records": 1,
    }
    # The running and queued jobs keep every row, even one whose directory the engine pruned
    # (the relay prunes those as it records new checkpoints).
    assert Checkpoint.objects.filter(job=d.running).count() == 2
    assert Checkpoint.objects.filter(job__status=Status.QUEUED).count() == 2
    assert set(Checkpoint.objects.filter(job__status=Status.SUCCEEDED).values_list("step", flat=True)) == {10}
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]

    # A second run finds nothing more.
    again = cleanup_run()
    assert (again.removals, again.checkpoint_rows, again.idempotency_records) == ([], 0, 0)


def test_it_deletes_nothing_in_a_dry_run_and_reports_what_it_would(populated):
    d = populated
    rows_before = Checkpoint.objects.count()
    report = cleanup_run(dry_run=True)

    for path in d.gone + d.keep:
        assert path.exists(), path
    assert Checkpoint.objects.count() == rows_before
    assert IdempotencyRecord.objects.count() == 2
    assert sorted(r.path for r in report.removals) == sorted(d.gone)
    assert report.bytes == d.gone_bytes
    assert (report.checkpoint_rows, report.idempotency_records) == (9, 1)


def test_the_command_prints_paths_and_bytes_and_deletes_only_without_dry_run(populated):
    d = populated
    out = io.StringIO()
    call_command("cleanup", "--dry-run", stdout=out)
    text = out.getvalue()
    assert f"would delete job_dir {d.gone[0]}" in text
    assert f"({d.gone_bytes} bytes)" in text and "9 checkpoint rows; 1 idempotency records" in text
    assert all(p.exists() for p in d.gone)

    out = io.StringIO()
    call_command("cleanup", stdout=out)
    assert f"deleted: {len(d.gone)} paths" in out.getvalue()
    assert not any(p.exists() for p in d.gone)
    assert all(p.exists() for p in d.keep)


def test_it_runs_periodically_on_the_maintenance_queue_and_in_the_embedded_worker():
    entry = next(e for e in app.conf.beat_schedule.values() if e["task"] == CLEANUP)
    assert entry["schedule"] == CLEANUP_SECONDS
    assert app.conf.task_routes[CLEANUP] == {"queue": MAINTENANCE_QUEUE}
    assert CLEANUP in inprocess._HANDLERS
