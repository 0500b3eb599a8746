"""The asyncio client against the live server: create, get, list iteration, retry on a lost answer."""

from __future__ import annotations

import asyncio

import pytest
from tuninglab_sdk import AsyncTuningLab, NotFoundError, TuningFailed, ValidationError

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_creates_gets_and_lists_jobs_asynchronously(live_server, raw_key, registered_model, dataset_path, no_worker):
    async def run() -> tuple:
        async with AsyncTuningLab(base_url=live_server.url, api_key=raw_key) as client:
            job = await client.tunings.create(model="tiny-llama", data=dataset_path, suffix="async", seed=3)
            fetched = await client.tunings.get(job.id)
            second = await client.tunings.create(model="tiny-llama", data=job.training_file)
            listed = [j.id async for j in client.tunings.list(limit=1)]
            pages = [len(p) async for p in client.tunings.list(limit=1).pages()]
            files = await client.files.list().to_list()
            return job, fetched, second, listed, pages, files

    job, fetched, second, listed, pages, files = asyncio.run(run())

    assert job.status == "queued" and job.suffix == "async" and job.seed == 3
    assert fetched.id == job.id and fetched.training_file == job.training_file
    assert listed == [second.id, job.id]
    assert pages == [1, 1]
    assert [f.id for f in files] == [job.training_file]


def test_it_retries_a_lost_create_response_asynchronously(
    live_server, raw_key, registered_model, dataset_path, dropping_proxy, no_worker
):
    from tunings.models import TuningJob as JobRow

    async def run() -> str:
        async with AsyncTuningLab(base_url=live_server.url, api_key=raw_key) as direct:
            file_id = (await direct.files.upload(dataset_path)).id

        async def no_sleep(seconds: float) -> None:
            return None

        async with AsyncTuningLab(base_url=dropping_proxy.url, api_key=raw_key, sleep=no_sleep) as client:
            return (await client.tunings.create(model="tiny-llama", data=file_id)).id

    job_id = asyncio.run(run())

    posts = dropping_proxy.matching("POST", "/v1/tunings")
    assert dropping_proxy.dropped == 1 and len(posts) == 2
    assert len({p["headers"]["Idempotency-Key"] for p in posts}) == 1
    assert list(JobRow.objects.values_list("id", flat=True)) == [job_id]


def test_it_raises_typed_errors_and_tuning_failed_asynchronously(
    live_server, raw_key, registered_model, dataset_path, no_worker
):
    from django.db import connections

    from tunings.services.state import tuning_job_fail

    def fail_job(**kwargs: object) -> None:
        # A worker thread of asyncio.to_thread: close its DB connection, or PostgreSQL cannot
        # drop the test database at teardown.
        try:
            tuning_job_fail(**kwargs)
        finally:
            connections.close_all()

    async def run() -> tuple:
        async with AsyncTuningLab(base_url=live_server.url, api_key=raw_key, max_retries=0) as client:
            with pytest.raises(NotFoundError):
                await client.tunings.get("ftjob-000000000000000000000000")
            with pytest.raises(ValidationError) as invalid:
                await client.tunings.create(model="tiny-llama", data=dataset_path, lora={"rank": 0})
            job = await client.tunings.create(model="tiny-llama", data=dataset_path)
            await asyncio.to_thread(
                fail_job,
                job_id=job.id,
                code="nan_detected",
                message="Loss became NaN.",
                suggestion="Lower the learning rate.",
            )
            with pytest.raises(TuningFailed) as failed:
                await client.tunings.wait_for_completion(job.id, poll_interval=0.05, progress=False)
            events = [e async for e in client.tunings.events(job.id, follow=True, poll_interval=0.05)]
            return invalid.value, failed.value, events

    invalid, failed, events = asyncio.run(run())

    assert invalid.param == "lora.rank"
    assert failed.code == "nan_detected" and failed.suggestion == "Lower the learning rate."
    assert events[-1].level == "error" and "NaN" in events[-1].message
