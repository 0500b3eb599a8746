"""What a tenant sees of a run: events and checkpoints without server paths, host names or pids.

The stored events keep that detail for operators (admin, logs); only the API answer drops it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tunings.models import Checkpoint, JobEvent, TuningJob
from workers.runner import run_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

# A worker id as a deployment names it: host name and process id.
WORKER_HOST = "gpu-node-7.cluster.internal"
INTERNAL_KEYS = {"pid", "worker", "adapter_path", "path", "log_tail", "returncode", "stopped"}


def _all_pages(api_client, url: str) -> list[dict]:
    rows: list[dict] = []
    after = None
    while True:
        body = api_client.get(url, {"limit": 2} | ({"after": after} if after else {})).json()
        rows += body["data"]
        if not body["has_more"]:
            return rows
        after = body["last_id"]


def _assert_nothing_internal(rows: list[dict], settings) -> None:
    text = json.dumps(rows)
    assert str(settings.DATA_DIR) not in text
    assert str(Path(settings.DATA_DIR).resolve()) not in text
    assert WORKER_HOST not in json.dumps([row.get("data") for row in rows])
    for row in rows:
        assert not INTERNAL_KEYS & set(row.get("data") or {}), row


def test_it_shows_the_tenant_no_server_paths_hosts_or_pids(fake_engine, make_job, user, api_client, settings):
    fake_engine([{"train": {"steps": 4, "checkpoint_every": 1}}, {"adapter": True}, {"done": True}])
    job = make_job(user, suffix="demo")
    worker_id = f"{WORKER_HOST}:{os.getpid()}"
    assert run_job(job.id, worker_id=worker_id, queue="cpu") == job.id
    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error

    # Operators keep the detail: the stored events still name the worker, the pid and the paths.
    stored = list(JobEvent.objects.filter(job=job).values_list("data", flat=True))
    assert any((d or {}).get("worker") == worker_id for d in stored)
    assert any("pid" in (d or {}) for d in stored)
    assert any(str(settings.DATA_DIR) in str((d or {}).get("path", "")) for d in stored)

    events = _all_pages(api_client, f"/v1/fine_tuning/jobs/{job.id}/events")
    checkpoints = _all_pages(api_client, f"/v1/fine_tuning/jobs/{job.id}/checkpoints")
    assert len(checkpoints) == 4
    _assert_nothing_internal(events + checkpoints, settings)
    # What a tenant needs is still there.
    started = next(e for e in events if e["message"].startswith("Training process started"))
    assert started["data"]["attempt"] == 1
    saved = [e["data"]["step"] for e in events if e["message"].startswith("Checkpoint saved")]
    assert sorted(saved) == [1, 2, 3, 4]
    metrics = next(e for e in events if e["type"] == "metrics")
    assert {"step", "total_steps", "loss", "lr"} <= set(metrics["data"])


def test_it_names_no_worker_host_in_event_messages(fake_engine, make_job, user, api_client):
    fake_engine([{"train": {"steps": 1}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    assert run_job(job.id, worker_id=f"{WORKER_HOST}:{os.getpid()}", queue="cpu") == job.id
    events = _all_pages(api_client, f"/v1/fine_tuning/jobs/{job.id}/events")
    assert WORKER_HOST not in json.dumps([e["message"] for e in events])


def test_it_hides_the_training_log_tail_which_names_server_paths(fake_engine, make_job, user, api_client, settings):
    fake_engine([{"stderr": f"Traceback: File {settings.DATA_DIR}/jobs/x/train.py, on {WORKER_HOST}"}])
    job = make_job(user)
    run_job(job.id, worker_id=WORKER_HOST, queue="cpu")
    job.refresh_from_db()
    assert job.status == TuningJob.Status.FAILED
    assert JobEvent.objects.filter(job=job, data__has_key="log_tail").exists()  # kept for operators
    events = _all_pages(api_client, f"/v1/fine_tuning/jobs/{job.id}/events")
    _assert_nothing_internal(events, settings)
    job_body = api_client.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    _assert_nothing_internal([job_body["error"]], settings)


def test_it_lists_only_checkpoints_whose_files_still_exist(fake_engine, make_job, user, api_client):
    fake_engine([{"train": {"steps": 4, "checkpoint_every": 1}}, {"adapter": True}, {"done": True}])
    job = make_job(user, suffix="demo")
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id
    paths = dict(Checkpoint.objects.filter(job=job).values_list("step", "path"))
    assert sorted(paths) == [1, 2, 3, 4]
    # What the engine does when it prunes to keep_checkpoints: the older directories go.
    for step in (1, 2):
        shutil.rmtree(paths[step])

    listed = _all_pages(api_client, f"/v1/fine_tuning/jobs/{job.id}/checkpoints")
    assert [c["step_number"] for c in listed] == [4, 3]
