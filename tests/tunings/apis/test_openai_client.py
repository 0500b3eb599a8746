"""The official ``openai`` package against our fine-tuning routes over real HTTP (live server)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from django.conf import settings

from tunings.models import Checkpoint, TuningJob
from tunings.services import state


@pytest.fixture
def openai_client(live_server, api_client):
    client = openai.OpenAI(api_key=api_client.raw_api_key, base_url=f"{live_server.url}/v1", max_retries=0)
    yield client
    # Close keep-alive sockets: each one holds a live-server thread and its DB connection,
    # which would keep PostgreSQL from dropping the test database.
    client.close()


@pytest.mark.django_db(transaction=True)
def test_it_serves_the_openai_fine_tuning_client(openai_client, llama, training_file, dispatched):
    job = openai_client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training_file.id,
        suffix="bot",
        seed=3,
        metadata={"team": "search"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
        extra_body={"tuning_method": "lora", "lora": {"rank": 4, "alpha": 8}},
    )
    assert job.object == "fine_tuning.job"
    assert job.status == "queued"
    assert job.hyperparameters.n_epochs == 2
    assert job.method.type == "supervised"
    assert job.model_extra["lora"]["rank"] == 4  # our extras come through as extra fields
    assert dispatched == [(job.id, "cpu")]

    assert openai_client.fine_tuning.jobs.retrieve(job.id).id == job.id
    listed = openai_client.fine_tuning.jobs.list(limit=10, metadata={"team": "search"})
    assert [j.id for j in listed.data] == [job.id]
    assert listed.has_more is False

    for step in (5, 10):
        Checkpoint.objects.create(job_id=job.id, step=step, path=f"c/{step}", metrics={"train_loss": 1.0})
        (Path(settings.DATA_DIR) / "c" / str(step)).mkdir(parents=True)  # listed only while the files exist
    checkpoints = openai_client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in checkpoints.data] == [10, 5]

    running = state.tuning_job_claim(job_id=job.id, worker_id="w1")
    state.tuning_job_record_progress(job_id=job.id, token=running.fencing_token, fields={"progress": 50.0})
    cancelled = openai_client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.model_extra["cancel_requested"] is True
    state.tuning_job_mark_cancelled(job_id=job.id, token=running.fencing_token)

    events = openai_client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(events.data) == 2
    assert events.has_more is True
    assert events.data[0].message == "Job cancelled; last checkpoint kept."
    # auto-pagination walks the cursor to the end
    all_events = list(openai_client.fine_tuning.jobs.list_events(job.id, limit=2))
    assert len(all_events) == 5
    assert len({e.id for e in all_events}) == 5

    with pytest.raises(openai.ConflictError) as conflict:
        openai_client.fine_tuning.jobs.cancel(job.id)
    assert conflict.value.code == "invalid_state"
    assert TuningJob.objects.get(id=job.id).status == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_it_maps_our_errors_to_openai_exceptions(openai_client, llama, training_file, dispatched):
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=training_file.id, hyperparameters={"n_epochs": 99}
        )
    assert bad.value.code == "invalid_hyperparameter"
    assert bad.value.param == "hyperparameters.n_epochs"

    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.fine_tuning.jobs.retrieve("ftjob-000000000000000000000000")
    assert missing.value.code == "not_found"
