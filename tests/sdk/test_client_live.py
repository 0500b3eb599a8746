"""The blocking SDK client against the real Django app served by ``live_server``."""

from __future__ import annotations

import pytest
from tuninglab_sdk import (
    AuthenticationError,
    ConflictError,
    FileObject,
    NotFoundError,
    TuningCancelled,
    TuningFailed,
    TuningJob,
    TuningLab,
    ValidationError,
    WaitTimeoutError,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_uploads_a_local_path_before_creating_the_job(sdk, dataset_path, no_worker):
    job = sdk.tunings.create(
        model="tiny-llama",
        data=str(dataset_path),
        method="lora",
        hyperparameters={"max_steps": 2, "batch_size": 2},
        suffix="support",
        seed=7,
        metadata={"team": "cx"},
        lora={"rank": 4, "alpha": 8},
    )

    from tunings.models import TrainingFile
    from tunings.models import TuningJob as JobRow

    row = JobRow.objects.get()
    assert isinstance(job, TuningJob)
    assert job.id == row.id and job.id.startswith("ftjob-")
    assert job.status == "queued"
    assert job.model == "tiny-llama" and job.method == "lora"
    assert job.seed == 7 and job.suffix == "support" and job.metadata == {"team": "cx"}
    assert row.lora_rank == 4 and row.lora_alpha == 8
    uploaded = TrainingFile.objects.get()
    assert job.training_file == uploaded.id and uploaded.filename == "customer_service.jsonl"
    assert uploaded.example_count == 12
    assert no_worker == [(job.id, "cpu")]
    assert job.raw["object"] == "fine_tuning.job"


def test_it_treats_a_file_prefixed_string_as_an_id_unless_it_is_a_path(sdk, dataset_path, no_worker):
    uploaded = sdk.files.upload(dataset_path)
    assert isinstance(uploaded, FileObject) and uploaded.status == "processed"

    job = sdk.tunings.create(model="tiny-llama", data=uploaded.id)

    from tunings.models import TrainingFile

    assert job.training_file == uploaded.id
    assert TrainingFile.objects.count() == 1  # no second upload


def test_it_gets_lists_and_deletes_files(sdk, dataset_path, tmp_path):
    first = sdk.files.upload(dataset_path)
    with open(dataset_path, "rb") as handle:
        second = sdk.files.upload(handle)

    assert sdk.files.get(first.id).filename == "customer_service.jsonl"
    ids = [f.id for f in sdk.files.list(limit=1)]  # one per page: exercises the cursor
    assert ids == [second.id, first.id]

    deleted = sdk.files.delete(first.id)
    assert deleted["deleted"] is True
    with pytest.raises(NotFoundError):
        sdk.files.get(first.id)


def test_it_paginates_jobs_newest_first_across_pages(sdk, dataset_path, no_worker):
    file_id = sdk.files.upload(dataset_path).id
    created = [sdk.tunings.create(model="tiny-llama", data=file_id, suffix=f"run{i}").id for i in range(3)]

    pager = sdk.tunings.list(limit=2)
    pages = list(pager.pages())
    assert [len(p) for p in pages] == [2, 1]
    assert pages[0].has_more is True and pages[1].has_more is False
    assert [job.id for job in sdk.tunings.list(limit=2)] == list(reversed(created))
    assert [job.id for job in sdk.tunings.list(status="queued")] == list(reversed(created))
    assert list(sdk.tunings.list(status="running")) == []


def test_it_cancels_a_queued_job_and_waiting_raises_tuning_cancelled(sdk, dataset_path, no_worker):
    job = sdk.tunings.create(model="tiny-llama", data=str(dataset_path))

    cancelled = sdk.tunings.cancel(job.id)

    assert cancelled.status == "cancelled" and cancelled.is_terminal
    with pytest.raises(TuningCancelled) as caught:
        sdk.tunings.wait_for_completion(job.id, poll_interval=0.05, progress=False)
    assert caught.value.job.id == job.id
    assert not isinstance(caught.value, TuningFailed)
    # Cancelling a finished job is a state conflict: raised at once, not retried.
    with pytest.raises(ConflictError) as conflict:
        sdk.tunings.cancel(job.id)
    assert conflict.value.code == "invalid_state"


def test_it_lists_events_newest_first_and_follows_them_in_log_order(sdk, dataset_path, no_worker):
    job = sdk.tunings.create(model="tiny-llama", data=str(dataset_path))
    sdk.tunings.cancel(job.id)

    newest_first = list(sdk.tunings.events(job.id, limit=1))
    followed = list(sdk.tunings.events(job.id, follow=True, poll_interval=0.05))

    assert len(newest_first) >= 2
    assert [e.id for e in followed] == [e.id for e in reversed(newest_first)]
    assert "cancelled" in followed[-1].message.lower()


def test_it_maps_error_statuses_to_typed_errors(sdk, live_server, dataset_path, no_worker):
    with pytest.raises(NotFoundError) as not_found:
        sdk.tunings.get("ftjob-000000000000000000000000")
    assert not_found.value.status == 404 and not_found.value.code == "not_found"

    with pytest.raises(ValidationError) as invalid:
        sdk.tunings.create(model="tiny-llama", data=str(dataset_path), hyperparameters={"n_epochs": 0})
    assert invalid.value.status == 400
    assert invalid.value.param == "hyperparameters.n_epochs"
    assert invalid.value.code == "invalid_hyperparameter"

    with pytest.raises(ValidationError) as unknown_model:
        sdk.tunings.create(model="no-such-model", data=str(dataset_path))
    assert unknown_model.value.param == "model" and unknown_model.value.suggestion

    # Close every client: an open keep-alive connection keeps a server thread (and its DB
    # session) alive past the test, and PostgreSQL then cannot drop the test database.
    with (
        TuningLab(base_url=live_server.url, api_key="tl-not-a-real-key", max_retries=0) as bad_key,
        pytest.raises(AuthenticationError) as unauthenticated,
    ):
        list(bad_key.tunings.list())
    assert unauthenticated.value.status == 401


def test_it_raises_tuning_failed_with_the_jobs_code_and_suggestion(sdk, dataset_path, no_worker):
    from tunings.services.state import tuning_job_fail

    job = sdk.tunings.create(model="tiny-llama", data=str(dataset_path))
    assert tuning_job_fail(
        job_id=job.id,
        code="out_of_memory",
        message="Ran out of memory at step 3.",
        param="hyperparameters.batch_size",
        suggestion="Lower batch_size or rank, or enable gradient checkpointing / QLoRA.",
    )

    with pytest.raises(TuningFailed) as caught:
        sdk.tunings.wait_for_completion(job.id, poll_interval=0.05, progress=False)

    failed = caught.value
    assert failed.code == "out_of_memory"
    assert failed.message == "Ran out of memory at step 3."
    assert failed.param == "hyperparameters.batch_size"
    assert failed.suggestion.startswith("Lower batch_size")
    assert failed.job.status == "failed" and failed.job.error.code == "out_of_memory"
    assert "out_of_memory" in str(failed)


def test_it_times_out_waiting_without_cancelling_the_job(sdk, dataset_path, no_worker):
    job = sdk.tunings.create(model="tiny-llama", data=str(dataset_path))

    with pytest.raises(TimeoutError) as caught:
        sdk.tunings.wait_for_completion(job.id, timeout=0.3, poll_interval=0.1, progress=False)

    assert isinstance(caught.value, WaitTimeoutError) and caught.value.job.id == job.id
    assert sdk.tunings.get(job.id).status == "queued"


def test_it_retries_a_create_whose_response_was_lost_without_a_second_job(
    live_server, raw_key, registered_model, dataset_path, dropping_proxy, no_worker
):
    from tunings.models import TuningJob as JobRow

    with TuningLab(base_url=live_server.url, api_key=raw_key) as direct:
        file_id = direct.files.upload(dataset_path).id
    with TuningLab(base_url=dropping_proxy.url, api_key=raw_key, max_retries=2, sleep=lambda s: None) as through_proxy:
        job = through_proxy.tunings.create(model="tiny-llama", data=file_id, suffix="retry")

    posts = dropping_proxy.matching("POST", "/v1/tunings")
    assert dropping_proxy.dropped == 1 and len(posts) == 2
    keys = {p["headers"]["Idempotency-Key"] for p in posts}
    assert len(keys) == 1  # the retry reused the first attempt's key
    assert JobRow.objects.count() == 1
    assert JobRow.objects.get().id == job.id
    assert JobRow.objects.get().idempotency_key == keys.pop()


def test_it_sends_a_fresh_idempotency_key_per_logical_create(sdk, dataset_path, no_worker):
    from tunings.models import TuningJob as JobRow

    file_id = sdk.files.upload(dataset_path).id
    a = sdk.tunings.create(model="tiny-llama", data=file_id)
    b = sdk.tunings.create(model="tiny-llama", data=file_id)
    assert a.id != b.id and JobRow.objects.count() == 2
    # An explicit key makes a deliberate resend a replay.
    c = sdk.tunings.create(model="tiny-llama", data=file_id, idempotency_key="nightly-2026-11-22")
    d = sdk.tunings.create(model="tiny-llama", data=file_id, idempotency_key="nightly-2026-11-22")
    assert c.id == d.id and JobRow.objects.count() == 3


def test_it_replays_a_deliberate_resend_with_a_local_path(sdk, dataset_path, no_worker):
    from tunings.models import TrainingFile
    from tunings.models import TuningJob as JobRow

    first = sdk.tunings.create(model="tiny-llama", data=dataset_path, idempotency_key="cron-run-17")
    again = sdk.tunings.create(model="tiny-llama", data=dataset_path, idempotency_key="cron-run-17")

    # The upload replays under a key derived from ours, so the create body (file id) matches.
    assert again.id == first.id and again.training_file == first.training_file
    assert JobRow.objects.count() == 1 and TrainingFile.objects.count() == 1
