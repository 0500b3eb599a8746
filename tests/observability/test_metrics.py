"""``GET /metrics``: the lab's own series, read from the database at scrape time.

The running-job test trains with the scripted fake child on a runner thread and scrapes while
it runs, as Prometheus would; the others write rows directly and read one scrape.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

import observability.selectors
from inference.models import Route, RouteSplit
from observability.collectors import DATABASE_COLLECTOR
from registry.models import ModelVersion, RegisteredModel
from registry.services.traffic import traffic_record
from tests.helpers import wait_until
from tunings.models import TuningJob
from workers.runner import run_job

JOB_GAUGES = (
    "tuninglab_job_loss",
    "tuninglab_job_learning_rate",
    "tuninglab_job_tokens_per_second",
    "tuninglab_job_progress_ratio",
    "tuninglab_job_eta_seconds",
    "tuninglab_job_step",
    "tuninglab_job_trained_tokens",
    "tuninglab_job_heartbeat_age_seconds",
)


def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """One scrape of /metrics: {sample name: {sorted label pairs: value}}."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def job_value(samples: dict, name: str, job: TuningJob) -> float:
    labels = (("job", job.id), ("model", "tiny-llama"), ("queue", "cpu"))
    return samples[name][labels]


def start_runner(job_id: str) -> threading.Thread:
    def target() -> None:
        try:
            run_job(job_id, worker_id="w1", queue="cpu")
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def step_of(job: TuningJob) -> int:
    return TuningJob.objects.values_list("current_step", flat=True).get(id=job.id)


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_a_running_jobs_loss_and_progress_gauges_move_while_it_runs_and_go_when_it_ends(
    fake_engine, make_job, user, settings
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "PROGRESS_WRITE_SECONDS": 0.05}
    # 200 steps, 0.03 s apart: ~6 s of training; the fake's loss is 2/step, lr 1e-4, 100 tok/s.
    fake_engine([{"train": {"steps": 200, "delay": 0.03}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    thread = start_runner(job.id)

    assert wait_until(lambda: step_of(job) >= 5, timeout=60)
    first = scrape()
    first_step = job_value(first, "tuninglab_job_step", job)
    assert wait_until(lambda: step_of(job) >= first_step + 40, timeout=60)
    second = scrape()

    assert 5 <= first_step < job_value(second, "tuninglab_job_step", job) < 200
    assert job_value(first, "tuninglab_job_progress_ratio", job) < job_value(
        second, "tuninglab_job_progress_ratio", job
    )
    assert job_value(second, "tuninglab_job_progress_ratio", job) == pytest.approx(
        job_value(second, "tuninglab_job_step", job) / 200
    )
    assert job_value(first, "tuninglab_job_loss", job) > job_value(second, "tuninglab_job_loss", job)
    assert job_value(second, "tuninglab_job_loss", job) == pytest.approx(
        2.0 / job_value(second, "tuninglab_job_step", job)
    )
    assert job_value(first, "tuninglab_job_eta_seconds", job) > job_value(second, "tuninglab_job_eta_seconds", job)
    assert job_value(second, "tuninglab_job_learning_rate", job) == pytest.approx(1e-4)
    assert job_value(second, "tuninglab_job_tokens_per_second", job) == 100.0
    # The lease was renewed at the claim at the latest: its age is within one lease.
    assert 0 <= job_value(second, "tuninglab_job_heartbeat_age_seconds", job) <= settings.TUNINGLAB["LEASE_SECONDS"]
    assert second["tuninglab_jobs"][(("queue", "cpu"), ("status", "running"))] == 1
    assert "tuninglab_job_eval_loss" not in second  # no evaluation yet: no sample, not a 0

    thread.join(timeout=60)
    assert not thread.is_alive()
    assert TuningJob.objects.get(id=job.id).status == TuningJob.Status.SUCCEEDED
    after = scrape()
    assert not [name for name in JOB_GAUGES if after.get(name)]  # no running job, no series
    assert after["tuninglab_jobs"] == {(("queue", "cpu"), ("status", "succeeded")): 1}
    assert after["tuninglab_queue_wait_seconds"] == {(("queue", "cpu"),): 0.0}


@pytest.mark.django_db
def test_failed_jobs_are_counted_by_their_error_code(make_job, user):
    failed = TuningJob.Status.FAILED
    for code in ("out_of_memory", "out_of_memory", "timeout"):
        make_job(user, status=failed, error={"code": code, "message": "m", "param": None})
    make_job(user, status=failed)  # a failure stored without an error body
    make_job(user, status=TuningJob.Status.CANCELLED, error={"code": "cancelled_by_user"})

    assert scrape()["tuninglab_failed_jobs"] == {
        (("code", "out_of_memory"),): 2,
        (("code", "timeout"),): 1,
        (("code", "unknown"),): 1,
    }


@pytest.mark.django_db
def test_it_counts_jobs_per_status_and_queue_and_ages_the_oldest_queued_job(make_job, user):
    oldest = make_job(user)
    make_job(user)
    make_job(user, queue="gpu", status=TuningJob.Status.SUCCEEDED)
    TuningJob.objects.filter(id=oldest.id).update(created_at=timezone.now() - timedelta(minutes=10))

    samples = scrape()
    assert samples["tuninglab_jobs"] == {
        (("queue", "cpu"), ("status", "queued")): 2,
        (("queue", "gpu"), ("status", "succeeded")): 1,
    }
    waits = samples["tuninglab_queue_wait_seconds"]
    assert 600 <= waits[(("queue", "cpu"),)] < 660
    assert waits[(("queue", "gpu"),)] == 0.0  # a known queue with nothing waiting


@pytest.mark.django_db
def test_it_reports_each_versions_traffic_and_its_routes_weights(user, fake_base_model):
    model = RegisteredModel.objects.create(owner=user, name="bot")
    v1, v2 = (
        ModelVersion.objects.create(
            registered_model=model, owner=user, version=n, base_model=fake_base_model, adapter_path=f"v{n}"
        )
        for n in (1, 2)
    )
    traffic_record(version_id=v1.id, latency_ms=250.0, prompt_tokens=10, completion_tokens=4)
    traffic_record(version_id=v1.id, latency_ms=750.0, prompt_tokens=6, completion_tokens=2, error=True)
    traffic_record(version_id=v2.id, latency_ms=100.0, shadow=True)
    route = Route.objects.create(registered_model=model)
    RouteSplit.objects.create(route=route, version=v1, weight=90)
    RouteSplit.objects.create(route=route, version=v2, weight=10)

    samples = scrape()
    one = (("model", "bot"), ("owner", "alice"), ("version", "1"))
    two = (("model", "bot"), ("owner", "alice"), ("version", "2"))
    assert samples["tuninglab_inference_requests_total"] == {one: 2, two: 0}
    assert samples["tuninglab_inference_errors_total"] == {one: 1, two: 0}
    assert samples["tuninglab_inference_request_seconds_total"][one] == pytest.approx(1.0)
    tokens = samples["tuninglab_inference_tokens_total"]
    assert (tokens[(("kind", "prompt"), *one)], tokens[(("kind", "completion"), *one)]) == (16, 6)
    assert samples["tuninglab_inference_shadow_requests_total"] == {one: 0, two: 1}
    assert samples["tuninglab_route_weight"] == {one: 90, two: 10}


@pytest.mark.django_db
def test_a_database_error_leaves_the_other_metrics_and_says_so(monkeypatch, make_job, user):
    make_job(user)
    assert scrape()["tuninglab_metrics_database_up"] == {(): 1.0}

    def outage() -> dict:
        raise DatabaseError("server closed the connection")

    monkeypatch.setattr(observability.selectors, "job_counts", outage)
    samples = scrape()
    assert samples["tuninglab_metrics_database_up"] == {(): 0.0}
    assert "tuninglab_jobs" not in samples
    assert samples["django_http_requests_total_by_view_transport_method_total"]  # the request metrics still answer


@pytest.mark.django_db
def test_in_multiprocess_mode_it_merges_the_process_files_and_adds_the_labs_metrics(
    monkeypatch, tmp_path, make_job, user
):
    make_job(user)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = scrape()
    assert samples["tuninglab_jobs"] == {(("queue", "cpu"), ("status", "queued")): 1}
    assert samples["tuninglab_metrics_database_up"] == {(): 1.0}
    # The in-memory default registry is not read in this mode (its process collector is absent).
    assert "process_cpu_seconds_total" not in samples


@pytest.mark.django_db
def test_a_scrape_costs_the_same_six_queries_for_one_running_job_or_many(make_job, user):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            families = list(DATABASE_COLLECTOR.collect())
        assert families[-1].samples[0].value == 1  # tuninglab_metrics_database_up
        return len(ctx.captured_queries)

    make_job(user, status=TuningJob.Status.RUNNING, lease_until=timezone.now())
    one = queries()
    for _ in range(5):
        make_job(user, status=TuningJob.Status.RUNNING, lease_until=timezone.now())
    assert queries() == one == 6


@pytest.mark.django_db
def test_it_asks_for_the_scrape_token_when_one_is_set(settings, make_job, user):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "METRICS_TOKEN": "s3cret-scrape-token"}
    make_job(user)
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": "s3cret-scrape-token"}):
        refused = Client().get("/metrics", **headers)
        assert refused.status_code == 401, headers
        assert b"tuninglab_jobs" not in refused.content
    allowed = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert allowed.status_code == 200
    assert b"tuninglab_jobs{" in allowed.content
