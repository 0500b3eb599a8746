"""The MLflow mirror against a real ``mlflow server`` process (started, stopped and restarted here).

A job that succeeds is mirrored (run with params, step metrics and the adapter; a registered
version carrying the alias the DB says); with the server stopped a job still succeeds and
``registry_sync`` fails clearly; once the server is back, ``registry_sync`` catches MLflow up.
Runs on SQLite and on PostgreSQL (``DATABASE_URL``); the server keeps its own SQLite store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from mlflow import MlflowClient

from registry.models import Alias, AliasEvent, ModelVersion
from registry.services.mlflow_sync import TAG_VERSION_ID, registry_sync
from tests.helpers import free_port
from tests.tuninglab.conftest import fake_base_model, hf_model_dir  # noqa: F401 - fixtures
from tests.workers.conftest import fake_engine, make_training_file  # noqa: F401 - fake_engine is a fixture
from tuninglab import dispatch
from tuninglab.task_names import SYNC_REGISTRY
from tunings.models import TuningJob
from workers.runner import run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.django_db(transaction=True)]

READY_TIMEOUT_S = 90
MLFLOW_CLI = Path(sys.executable).with_name("mlflow")


class MlflowServer:
    """``mlflow server`` on loopback in its own process group, with its store under ``root``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.startup_s: list[float] = []
        root.mkdir(parents=True, exist_ok=True)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))

    def start(self) -> None:
        self.starts += 1
        argv = [
            *([str(MLFLOW_CLI)] if MLFLOW_CLI.exists() else [sys.executable, "-m", "mlflow"]),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # No background job runner: this server only stores what the sync sends.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        with open(self.root / f"server-{self.starts}.log", "wb") as fh:
            self.proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    self.startup_s.append(round(time.monotonic() - started, 1))
                    return
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"mlflow server not ready after {READY_TIMEOUT_S}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after a few seconds."""
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # uvicorn's worker, if the parent went first
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow-server", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def worker(monkeypatch) -> list[str]:
    """Messages are taken at once, as a worker would: SYNC_REGISTRY runs ``registry_sync`` here.

    Returns the task names sent (training wake-ups are recorded, not run).
    """
    sent: list[str] = []

    def send_task(name: str, *, args, queue: str) -> None:
        sent.append(name)
        if name == SYNC_REGISTRY:
            registry_sync()

    monkeypatch.setattr(dispatch, "send_task", send_task)
    return sent


def succeed_job(user, base_model, settings, *, losses: list[float]) -> TuningJob:
    """A job that trains (fake engine) and succeeds; its run dir holds the metrics.jsonl the engine would write."""
    job = TuningJob.objects.create(
        owner=user,
        base_model=base_model,
        training_file=make_training_file(user, settings),
        resolved_hyperparameters={"max_steps": len(losses), "batch_size": 2},
        lora_rank=4,
        lora_alpha=8.0,
        target_modules=["q_proj", "v_proj"],
        seed=11,
        model_name="support-bot",
        status=TuningJob.Status.QUEUED,
    )
    run_dir = Path(settings.DATA_DIR) / "jobs" / job.id / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"type": "metrics", "step": i, "loss": loss}) + "\n" for i, loss in enumerate(losses, 1))
    )
    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id
    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error
    return job


def move_alias(version: ModelVersion, alias: str = "production") -> Alias:
    """Point ``alias`` at ``version`` as the alias services do (row, event, mirror pending)."""
    current = Alias.objects.filter(registered_model=version.registered_model, alias=alias).first()
    before = current.version if current else None
    if current is None:
        current = Alias.objects.create(registered_model=version.registered_model, alias=alias, version=version)
    else:
        current.version, current.mlflow_synced_at = version, None
        current.save(update_fields=["version", "mlflow_synced_at", "updated_at"])
    AliasEvent.objects.create(alias=current, from_version=before, to_version=version, reason="integration test")
    return current


def assert_mirrored(client: MlflowClient, version: ModelVersion, *, losses: list[float], tmp_path: Path) -> None:
    version.refresh_from_db()
    assert version.mlflow_synced_at is not None and version.mlflow_error == "", version.mlflow_error
    run = client.get_run(version.mlflow_run_id)
    params = run.data.params
    assert (params["base_model"], params["base_model_content_hash"]) == (
        version.base_model.name,
        version.base_model.content_hash,
    )
    assert (params["method"], params["lora_rank"], params["seed"]) == ("lora", "4", "11")
    assert run.data.tags[TAG_VERSION_ID] == version.id
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == list(enumerate(losses, 1))
    adapter = Path(client.download_artifacts(run.info.run_id, "adapter", str(tmp_path / version.id)))
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"fake-weights"
    registered = client.get_model_version(f"u{version.owner_id}.support-bot", version.mlflow_version)
    assert registered.run_id == run.info.run_id and registered.source == f"{run.info.artifact_uri}/adapter"
    experiment_id = run.info.experiment_id
    assert len(client.search_runs([experiment_id], filter_string=f"tags.`{TAG_VERSION_ID}` = '{version.id}'")) == 1


def test_it_mirrors_jobs_to_a_real_server_and_catches_up_after_an_outage(
    mlflow_server,
    worker,
    fake_engine,  # noqa: F811 - the fixture imported above
    fake_base_model,  # noqa: F811
    user,
    settings,
    tmp_path,
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_ENABLED": True, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    fake_engine([{"train": {"steps": 3}}, {"adapter": True}, {"done": True}])
    name = f"u{user.id}.support-bot"

    # 1. Server up: the finished job asks for a sync, which mirrors it; an alias follows the DB.
    started = time.monotonic()
    v1 = ModelVersion.objects.get(job=succeed_job(user, fake_base_model, settings, losses=[2.0, 1.0, 0.5]))
    assert worker.count(SYNC_REGISTRY) == 1
    assert_mirrored(client, v1, losses=[2.0, 1.0, 0.5], tmp_path=tmp_path)
    first_job_s = time.monotonic() - started
    move_alias(v1)
    call_command("registry_sync", stdout=io.StringIO())
    assert str(client.get_model_version_by_alias(name, "production").version) == v1.mlflow_version == "1"

    # 2. Server stopped: the next job still succeeds (its sync request fails, the job does not),
    # and registry_sync says what could not be mirrored, and why.
    mlflow_server.stop()
    v2 = ModelVersion.objects.get(job=succeed_job(user, fake_base_model, settings, losses=[1.5, 0.25]))
    assert worker.count(SYNC_REGISTRY) == 2
    v2.refresh_from_db()
    assert v2.mlflow_synced_at is None and f"MLflow at {mlflow_server.uri} is unreachable" in v2.mlflow_error
    move_alias(v2)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=r"2 item\(s\) could not be mirrored to MLflow at http://127\.0\.0\.1"):
        call_command("registry_sync", stdout=out, stderr=err)
    assert "alice/support-bot v2: MLflow at" in err.getvalue()
    assert "alice/support-bot@production: MLflow at" in err.getvalue()

    # 3. Server back (same store): registry_sync catches up, and a second run adds nothing.
    mlflow_server.start()
    out = io.StringIO()
    call_command("registry_sync", stdout=out)
    assert "alice/support-bot v2 -> MLflow" in out.getvalue(), out.getvalue()
    assert "alice/support-bot@production -> MLflow v2" in out.getvalue()
    assert_mirrored(client, v2, losses=[1.5, 0.25], tmp_path=tmp_path)
    assert str(client.get_model_version_by_alias(name, "production").version) == "2"
    assert sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")) == ["1", "2"]
    again = registry_sync()
    assert again.ok and (again.versions, again.aliases, again.evaluations) == ([], [], [])
    print(f"\nmlflow server startup: {mlflow_server.startup_s} s; first job + sync: {first_job_s:.1f} s")
