"""The Celery worker's own metrics (``workers.celery_metrics``): task counters and durations,
jobs running, checkpoint write time and the training children's memory, served on the worker's
port (``TUNINGLAB_WORKER_METRICS_PORT``).

The relay and in-process tests run here; the last ones start real ``celery worker`` processes
against PostgreSQL and Redis (skipped without them, failed under ``CI=true``) and scrape them
over HTTP as Prometheus would.
"""

from __future__ import annotations

import os
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.db import connections
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from lora_engine import protocol
from tests.helpers import free_port, wait_until
from tests.observability.test_prometheus_config import CONFIG, PROMETHEUS, query, require_binary, running_prometheus
from tests.workers.conftest import FAKE_ENGINE
from tuninglab.celery import app as celery_app
from tuninglab.task_names import RUN_TUNING_JOB, SWEEP_EXPIRED_LEASES
from tunings.models import TuningJob
from workers import celery_metrics
from workers.fencing import FencedWriter
from workers.relay import LineRelay
from workers.runner import run_job
from workers.tasks import sweep_expired_leases

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape_url(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def checkpoint_count(queue: str) -> tuple[float, float]:
    """(sum, count) of the checkpoint write histogram in this process."""
    name = "tuninglab_worker_checkpoint_write_seconds"
    return (
        REGISTRY.get_sample_value(f"{name}_sum", {"queue": queue}) or 0.0,
        REGISTRY.get_sample_value(f"{name}_count", {"queue": queue}) or 0.0,
    )


@pytest.mark.django_db
def test_the_checkpoint_write_time_is_the_gap_between_its_steps_metrics_and_checkpoint_lines(make_job, user):
    job = make_job(user, status=TuningJob.Status.RUNNING, fencing_token=4)
    clock = FakeClock()
    relay = LineRelay(FencedWriter(job_id=job.id, token=4, on_lost=lambda: None), clock=clock, queue="relaytest")
    sum_before, count_before = checkpoint_count("relaytest")

    relay.handle(protocol.Line("", {"type": "metrics", "step": 10, "total_steps": 20, "loss": 1.0}))
    clock.now += 2.5  # the engine writes the checkpoint of step 10
    relay.handle(protocol.Line("", {"type": "checkpoint", "step": 10, "path": "/x/step-000010", "metrics": {}}))
    # A checkpoint whose step printed no metrics line (log_every does not divide it): nothing to measure.
    clock.now += 7.0
    relay.handle(protocol.Line("", {"type": "checkpoint", "step": 15, "path": "/x/step-000015", "metrics": {}}))

    sum_after, count_after = checkpoint_count("relaytest")
    assert (count_after - count_before, sum_after - sum_before) == (1, pytest.approx(2.5))


@pytest.fixture
def metrics_server():
    port = celery_metrics.start_worker_metrics_server(0)
    yield f"http://127.0.0.1:{port}/metrics"
    celery_metrics.stop_worker_metrics_server()


@pytest.mark.django_db
def test_a_task_run_in_the_worker_process_moves_its_counters_on_the_metrics_port(metrics_server):
    celery_metrics.connect_signals()
    before = scrape_url(metrics_server)

    assert sweep_expired_leases.apply().successful()
    assert celery_app.tasks[RUN_TUNING_JOB].apply(args=[]).failed()  # missing job id: a TypeError

    after = scrape_url(metrics_server)

    def moved(name: str, task: str) -> float:
        return value(after, name, task=task) - value(before, name, task=task)

    assert moved("tuninglab_worker_tasks_started_total", SWEEP_EXPIRED_LEASES) == 1
    assert moved("tuninglab_worker_tasks_succeeded_total", SWEEP_EXPIRED_LEASES) == 1
    assert moved("tuninglab_worker_tasks_failed_total", SWEEP_EXPIRED_LEASES) == 0
    assert moved("tuninglab_worker_task_duration_seconds_count", SWEEP_EXPIRED_LEASES) == 1
    assert moved("tuninglab_worker_tasks_started_total", RUN_TUNING_JOB) == 1
    assert moved("tuninglab_worker_tasks_failed_total", RUN_TUNING_JOB) == 1
    assert moved("tuninglab_worker_tasks_succeeded_total", RUN_TUNING_JOB) == 0
    # The worker's own memory, for the dashboard's memory panel.
    assert value(after, "process_resident_memory_bytes") > 0


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_a_running_job_counts_as_running_and_its_child_is_in_the_memory_gauge(
    metrics_server, fake_engine, make_job, user
):
    fake_engine([{"train": {"steps": 400, "delay": 0.02, "checkpoint_every": 100}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    idle = scrape_url(metrics_server)

    def target() -> None:
        try:
            run_job(job.id, worker_id="w1", queue="cpu")
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert wait_until(lambda: TuningJob.objects.get(id=job.id).current_step >= 5, timeout=60)
    running = scrape_url(metrics_server)
    thread.join(timeout=90)
    assert not thread.is_alive()
    done = scrape_url(metrics_server)

    assert value(running, "tuninglab_worker_jobs_running", queue="cpu") == 1
    assert value(done, "tuninglab_worker_jobs_running", queue="cpu") == 0
    # The fake child (a Python process) is a descendant while it trains: tens of MB, then gone.
    assert (
        value(running, "tuninglab_worker_descendant_processes")
        >= value(idle, "tuninglab_worker_descendant_processes") + 1
    )
    assert value(running, "tuninglab_worker_descendants_resident_memory_bytes") > 5_000_000
    # Checkpoints at steps 100, 200, 300 and 400, each right after its step's metrics line.
    checkpoints = value(done, "tuninglab_worker_checkpoint_write_seconds_count", queue="cpu") - value(
        idle, "tuninglab_worker_checkpoint_write_seconds_count", queue="cpu"
    )
    assert checkpoints == 4
    assert TuningJob.objects.get(id=job.id).status == TuningJob.Status.SUCCEEDED


def test_it_deletes_only_the_files_of_processes_that_no_longer_run(tmp_path: Path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    dead = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f"counter_{dead}.db", f"histogram_{os.getpid()}.db", f"gauge_livesum_{os.getppid()}.db"):
        (directory / name).write_bytes(b"x")
    removed = celery_metrics.remove_dead_process_files(directory)
    assert [p.name for p in removed] == [f"counter_{dead}.db"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [f"histogram_{os.getpid()}.db", f"gauge_livesum_{os.getppid()}.db"]
    )


# --- real `celery worker` processes ------------------------------------------------------------


def fake_python(tmp_path: Path) -> Path:
    """A ``TUNINGLAB_PYTHON`` for the worker: ``-m lora_engine.train CFG`` runs the scripted fake engine."""
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENGINE}" "$3"\n')
    script.chmod(0o755)
    return script


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(300)
@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_real_celery_worker_serves_its_task_job_and_checkpoint_metrics(
    start_worker, tmp_path, make_job, user, fake_engine, pool
):
    script = fake_engine(
        [{"train": {"steps": 100, "delay": 0.05, "checkpoint_every": 25}}, {"adapter": True}, {"done": True}]
    )
    port = free_port()
    env = {
        "TUNINGLAB_WORKER_METRICS_PORT": str(port),
        "TUNINGLAB_PYTHON": str(fake_python(tmp_path)),
        "FAKE_ENGINE_SCRIPT": str(script),
        "TUNINGLAB_PROGRESS_WRITE_SECONDS": "0.1",  # the row shows the steps while the job runs
    }
    if pool == "prefork":
        # Tasks run in a pool process: the main process serves the merge of their files.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "worker-metrics")
    worker = start_worker("obs", env=env, pool=pool)
    url = f"http://127.0.0.1:{port}/metrics"
    assert wait_until(lambda: _answers(url), timeout=30), worker.log()[-3000:]
    before = scrape_url(url)

    job = make_job(user)
    celery_app.send_task(RUN_TUNING_JOB, args=[job.id], queue="cpu")
    assert wait_until(lambda: TuningJob.objects.get(id=job.id).current_step >= 3, timeout=120), worker.log()[-3000:]
    running = scrape_url(url)
    assert wait_until(lambda: TuningJob.objects.get(id=job.id).is_terminal, timeout=120), worker.log()[-3000:]
    assert TuningJob.objects.get(id=job.id).status == TuningJob.Status.SUCCEEDED
    # The task returns just after the job row is final: wait for its counters.
    assert wait_until(
        lambda: value(scrape_url(url), "tuninglab_worker_tasks_succeeded_total", task=RUN_TUNING_JOB) >= 1, timeout=30
    )
    celery_app.send_task(RUN_TUNING_JOB, args=[], queue="cpu")  # no job id: the task raises
    assert wait_until(
        lambda: value(scrape_url(url), "tuninglab_worker_tasks_failed_total", task=RUN_TUNING_JOB) >= 1, timeout=60
    )
    after = scrape_url(url)

    assert value(before, "tuninglab_worker_tasks_started_total", task=RUN_TUNING_JOB) == 0
    assert value(running, "tuninglab_worker_jobs_running", queue="cpu") == 1
    assert value(after, "tuninglab_worker_jobs_running", queue="cpu") == 0
    assert value(after, "tuninglab_worker_tasks_started_total", task=RUN_TUNING_JOB) == 2
    assert value(after, "tuninglab_worker_tasks_succeeded_total", task=RUN_TUNING_JOB) == 1
    assert value(after, "tuninglab_worker_tasks_failed_total", task=RUN_TUNING_JOB) == 1
    assert value(after, "tuninglab_worker_task_duration_seconds_count", task=RUN_TUNING_JOB) == 2
    # The training task took at least its 100 steps x 0.05 s.
    assert value(after, "tuninglab_worker_task_duration_seconds_sum", task=RUN_TUNING_JOB) >= 5.0
    assert value(after, "tuninglab_worker_checkpoint_write_seconds_count", queue="cpu") == 4  # steps 25 … 100
    assert value(running, "tuninglab_worker_descendants_resident_memory_bytes") > 5_000_000
    assert value(after, "process_resident_memory_bytes") > 0


def _answers(url: str) -> bool:
    try:
        scrape_url(url)
    except OSError:
        return False
    return True


@pytest.mark.timeout(90)
@pytest.mark.django_db
def test_a_real_prometheus_scrapes_the_worker_port_with_the_celery_job_of_the_config(metrics_server, tmp_path):
    require_binary(PROMETHEUS)
    celery_metrics.connect_signals()
    assert sweep_expired_leases.apply().successful()
    config = yaml.safe_load(CONFIG.read_text())
    worker = urllib.parse.urlsplit(metrics_server).netloc
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [worker]}]}
        for job in config["scrape_configs"]
        if job["job_name"] == "celery"
    ]
    with running_prometheus(config, tmp_path) as server:

        def value(promql: str) -> str | None:
            result = query(server, promql)
            return result[0]["value"][1] if result else None

        assert wait_until(lambda: value('up{job="celery"}') == "1", timeout=60), query(server, "up")
        started = f'tuninglab_worker_tasks_started_total{{job="celery", task="{SWEEP_EXPIRED_LEASES}"}}'
        assert wait_until(lambda: float(value(started) or 0) >= 1, timeout=20)
