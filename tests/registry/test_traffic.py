"""``registry.services.traffic``: live per-version counters the gateway adds to after each request."""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from django.utils import timezone

from registry.models import VersionTraffic
from registry.services.traffic import traffic_record, traffic_summary
from tests.helpers import require_postgres

ZEROS = {
    "requests": 0,
    "errors": 0,
    "error_rate": None,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "mean_latency_ms": None,
    "max_latency_ms": 0.0,
    "shadow_requests": 0,
    "shadow_errors": 0,
    "last_request_at": None,
}


def _row(version) -> tuple:
    row = VersionTraffic.objects.get(version=version)
    return (
        row.requests,
        row.errors,
        row.prompt_tokens,
        row.completion_tokens,
        row.latency_ms_sum,
        row.latency_ms_max,
        row.shadow_requests,
        row.shadow_errors,
    )


@pytest.mark.django_db
def test_it_reports_zeros_for_a_version_that_never_served(tiny_adapter_version):
    version = tiny_adapter_version()
    assert traffic_summary(version) == ZEROS
    assert not VersionTraffic.objects.exists()  # reading creates no row


@pytest.mark.django_db
def test_it_adds_each_request_to_the_counters(tiny_adapter_version):
    version = tiny_adapter_version()
    before = timezone.now()
    traffic_record(version_id=version.id, latency_ms=120.0, prompt_tokens=12, completion_tokens=30)
    assert _row(version) == (1, 0, 12, 30, 120.0, 120.0, 0, 0)
    traffic_record(version_id=version.id, latency_ms=80.5, prompt_tokens=8, completion_tokens=0, error=True)
    assert _row(version) == (2, 1, 20, 30, 200.5, 120.0, 0, 0)
    traffic_record(version_id=version.id, latency_ms=300.25, prompt_tokens=1, completion_tokens=2)
    assert _row(version) == (3, 1, 21, 32, 500.75, 300.25, 0, 0)
    assert VersionTraffic.objects.count() == 1
    assert VersionTraffic.objects.get().last_request_at >= before


@pytest.mark.django_db
def test_it_counts_shadow_requests_apart(tiny_adapter_version):
    version = tiny_adapter_version()
    traffic_record(version_id=version.id, latency_ms=50.0, prompt_tokens=5, completion_tokens=5)
    traffic_record(version_id=version.id, latency_ms=9_000.0, prompt_tokens=99, completion_tokens=99, shadow=True)
    traffic_record(version_id=version.id, latency_ms=1.0, shadow=True, error=True)
    # Neither tokens nor latency of a shadow request reach the answered requests' numbers.
    assert _row(version) == (1, 0, 5, 5, 50.0, 50.0, 2, 1)


@pytest.mark.django_db
def test_it_never_subtracts_negative_token_counts(tiny_adapter_version):
    version = tiny_adapter_version()
    traffic_record(version_id=version.id, latency_ms=10.0, prompt_tokens=7, completion_tokens=3)
    traffic_record(version_id=version.id, latency_ms=10.0, prompt_tokens=-5, completion_tokens=-1)
    assert _row(version)[:4] == (2, 0, 7, 3)


@pytest.mark.django_db
def test_it_keeps_versions_apart(tiny_adapter_version):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    traffic_record(version_id=v1.id, latency_ms=10.0)
    traffic_record(version_id=v1.id, latency_ms=20.0)
    traffic_record(version_id=v2.id, latency_ms=30.0, error=True)
    assert (traffic_summary(v1)["requests"], traffic_summary(v2)["requests"]) == (2, 1)
    assert (traffic_summary(v1)["error_rate"], traffic_summary(v2)["error_rate"]) == (0.0, 1.0)


@pytest.mark.django_db
def test_it_summarises_rates_and_means_rounded(tiny_adapter_version):
    version = tiny_adapter_version()
    for latency, error in ((1.0, False), (2.0, True), (2.0, False)):
        traffic_record(version_id=version.id, latency_ms=latency, completion_tokens=4, error=error)
    summary = traffic_summary(version)
    assert isinstance(summary.pop("last_request_at"), int)
    assert summary == {
        **{k: v for k, v in ZEROS.items() if k != "last_request_at"},
        "requests": 3,
        "errors": 1,
        "error_rate": pytest.approx(1 / 3),
        "completion_tokens": 12,
        "mean_latency_ms": 1.67,
        "max_latency_ms": 2.0,
    }


THREADS = 8
PER_THREAD = 50


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_loses_no_count_under_concurrent_requests(tiny_adapter_version):
    require_postgres()
    version = tiny_adapter_version()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def serve(n: int) -> None:
        try:
            barrier.wait()  # all threads race for the first get_or_create, then for the UPDATEs
            for i in range(PER_THREAD):
                traffic_record(
                    version_id=version.id,
                    latency_ms=float(n * PER_THREAD + i),
                    prompt_tokens=2,
                    completion_tokens=3,
                    error=i % 10 == 0,
                    shadow=i % 25 == 0,
                )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    shadow_per_thread = 2  # i = 0, 25
    answered_per_thread = PER_THREAD - shadow_per_thread
    answered = [n * PER_THREAD + i for n in range(THREADS) for i in range(PER_THREAD) if i % 25 != 0]
    assert len(answered) == THREADS * answered_per_thread
    errors_per_thread = sum(1 for i in range(PER_THREAD) if i % 10 == 0 and i % 25 != 0)  # 10, 20, 30, 40
    shadow_errors_per_thread = 1  # i = 0
    assert _row(version) == (
        THREADS * answered_per_thread,
        THREADS * errors_per_thread,
        THREADS * answered_per_thread * 2,
        THREADS * answered_per_thread * 3,
        float(sum(answered)),
        float(max(answered)),
        THREADS * shadow_per_thread,
        THREADS * shadow_errors_per_thread,
    )
    assert VersionTraffic.objects.count() == 1
