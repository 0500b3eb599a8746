"""The official ``openai`` package against our server: files, fine-tuning jobs, events,
pagination, cancel, errors, and ``fine_tuned_model`` after a real run."""

from __future__ import annotations

import time

import openai
import pytest
from openai import OpenAI

from registry.models import ModelVersion, RegisteredModel
from workers import inprocess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


@pytest.fixture
def oa(live_server, raw_key, registered_model) -> OpenAI:
    client = OpenAI(base_url=live_server.url + "/v1", api_key=raw_key, max_retries=0, timeout=30)
    yield client
    client.close()


def test_it_uploads_creates_retrieves_lists_and_cancels_jobs(oa, dataset_path, no_worker):
    with open(dataset_path, "rb") as handle:
        uploaded = oa.files.create(file=handle, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert uploaded.filename == "customer_service.jsonl" and uploaded.purpose == "fine-tune"
    assert uploaded.bytes == dataset_path.stat().st_size

    first = oa.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, hyperparameters={"n_epochs": 1}, suffix="demo", seed=7
    )
    second = oa.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="other")
    assert first.object == "fine_tuning.job" and first.status == "queued"
    assert first.model == "tiny-llama" and first.training_file == uploaded.id
    assert first.seed == 7 and first.user_provided_suffix == "demo"
    assert first.hyperparameters.n_epochs == 1
    assert first.fine_tuned_model is None
    assert first.model_extra["tuning_method"] == "lora" and first.to_dict()["progress"] == 0.0  # our extras

    fetched = oa.fine_tuning.jobs.retrieve(first.id)
    assert fetched.id == first.id and fetched.status == "queued"

    page = oa.fine_tuning.jobs.list(limit=1)
    assert [job.id for job in page.data] == [second.id] and page.has_more is True
    pages = list(page.iter_pages())
    assert [[job.id for job in p.data] for p in pages] == [[second.id], [first.id]]
    assert [job.id for job in oa.fine_tuning.jobs.list(limit=1)] == [second.id, first.id]  # auto-paging

    cancelled = oa.fine_tuning.jobs.cancel(first.id)
    assert cancelled.status == "cancelled"

    events = oa.fine_tuning.jobs.list_events(first.id, limit=1)
    messages = [event.message for event in events]  # follows the cursor across pages of one
    assert len(messages) >= 3
    assert "cancelled" in messages[0].lower()  # newest first, as OpenAI orders them
    assert all(event.object == "fine_tuning.job.event" for event in events.data)

    listed_files = oa.files.list()
    assert [f.id for f in listed_files] == [uploaded.id]
    assert oa.files.retrieve(uploaded.id).id == uploaded.id


def test_it_raises_the_openai_packages_errors_with_our_message(oa, dataset_path, no_worker):
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as caught:
        oa.fine_tuning.jobs.create(model="tiny-llama", training_file="file-000000000000000000000000")
    error = caught.value
    assert "file-000000000000000000000000" in error.message
    assert error.body["param"] == "training_file"
    assert error.code

    with pytest.raises(openai.NotFoundError) as missing:
        oa.fine_tuning.jobs.retrieve("ftjob-000000000000000000000000")
    assert "No such tuning job" in missing.value.message

    with open(dataset_path, "rb") as handle:
        uploaded = oa.files.create(file=handle, purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad_hp:
        oa.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, hyperparameters={"n_epochs": 0})
    assert bad_hp.value.body["param"] == "hyperparameters.n_epochs"

    with (
        OpenAI(base_url=oa.base_url, api_key="tl-wrong", max_retries=0) as bad_key,
        pytest.raises(openai.AuthenticationError),
    ):
        bad_key.fine_tuning.jobs.list()


def test_it_reports_fine_tuned_model_after_a_real_run(live_server, raw_key, base_model, dataset_path, settings):
    settings.TUNINGLAB_INPROCESS_WORKER = True
    with OpenAI(base_url=live_server.url + "/v1", api_key=raw_key, max_retries=0, timeout=30) as oa:
        try:
            with open(dataset_path, "rb") as handle:
                uploaded = oa.files.create(file=handle, purpose="fine-tune")
            job = oa.fine_tuning.jobs.create(
                model="tiny-llama", training_file=uploaded.id, hyperparameters={"n_epochs": 1}, suffix="demo", seed=7
            )
            deadline = time.monotonic() + 240
            while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.5)
                job = oa.fine_tuning.jobs.retrieve(job.id)
        finally:
            inprocess.wait_idle(60)
            inprocess.stop()

        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:tiny-llama:alice:demo:{job.id}"
        assert job.finished_at is not None and job.trained_tokens > 0
        checkpoints = oa.fine_tuning.jobs.checkpoints.list(job.id)
        assert all(c.fine_tuned_model_checkpoint.startswith(job.fine_tuned_model) for c in checkpoints.data)


def test_it_makes_the_openai_packages_retry_safe_with_an_idempotency_key(
    live_server, raw_key, registered_model, dataset_path, no_worker
):
    from tests.sdk.conftest import DroppingProxy
    from tunings.models import TuningJob as JobRow

    with (
        OpenAI(base_url=live_server.url + "/v1", api_key=raw_key, max_retries=0) as direct,
        open(dataset_path, "rb") as handle,
    ):
        file_id = direct.files.create(file=handle, purpose="fine-tune").id

    def drop_create(method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/") == "/v1/fine_tuning/jobs"

    with (
        DroppingProxy(live_server.url, drop_create) as proxy,
        OpenAI(base_url=proxy.url + "/v1", api_key=raw_key, max_retries=2) as client,
    ):
        job = client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=file_id, extra_headers={"Idempotency-Key": "oa-create-1"}
        )

    assert proxy.dropped == 1 and len(proxy.matching("POST", "/v1/fine_tuning/jobs")) == 2
    assert list(JobRow.objects.values_list("id", flat=True)) == [job.id]


def test_it_lists_and_retrieves_models_with_the_openai_package(oa, user, registered_model):
    model = RegisteredModel.objects.create(owner=user, name="support-bot")
    ModelVersion.objects.create(
        registered_model=model, owner=user, version=1, base_model=registered_model, adapter_path="/tmp/unused"
    )

    listed = [(m.id, m.owned_by) for m in oa.models.list()]
    base = oa.models.retrieve("tiny-llama")

    assert listed == [("tiny-llama", "system"), ("support-bot", "alice")]
    assert (base.id, base.object, base.owned_by) == ("tiny-llama", "model", "system")
    assert oa.models.retrieve("support-bot").model_extra["latest_version"] == 1
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("no-such-model")
