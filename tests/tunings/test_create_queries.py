"""Statements a job create no longer issues (measured by ``benchmarks/control_plane.py``): no
re-read of the owner and base model for the answer, no savepoint around the job INSERT without an
``Idempotency-Key``, while a reused key still ends as ``idempotency_key_reused``.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry.models import BaseModel
from tuninglab.errors import IdempotencyError
from tunings.models import JobEvent, TrainingFile, TuningJob
from tunings.serializers.job_request import job_spec_from_payload
from tunings.services.jobs import tuning_job_create


@pytest.fixture
def llama(db):
    return BaseModel.objects.create(name="tiny-llama", path="/models/tiny-llama", architecture="LlamaForCausalLM")


@pytest.fixture
def training_file(user):
    return TrainingFile.objects.create(
        owner=user,
        filename="train.jsonl",
        purpose="fine-tune",
        sha256="0" * 64,
        bytes=1234,
        storage_path="files/train.jsonl",
        format="openai_chat",
        example_count=50,
        status=TrainingFile.Status.PROCESSED,
    )


def _body(training_file: TrainingFile) -> dict:
    return {"model": "tiny-llama", "training_file": training_file.id, "hyperparameters": {"max_steps": 2}}


def _after_insert(queries: list[dict]) -> list[str]:
    """The SQL issued after the job row's INSERT."""
    sql = [q["sql"] for q in queries]
    first = next(i for i, s in enumerate(sql) if s.startswith('INSERT INTO "tunings_tuningjob"'))
    return sql[first + 1 :]


def test_it_answers_a_create_without_reading_the_owner_or_the_base_model_again(
    api_client, llama, training_file, dispatched, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        api_client.post("/v1/fine_tuning/jobs", _body(training_file), format="json")  # warm-up: last-used touch
        with CaptureQueriesContext(connection) as ctx:
            resp = api_client.post("/v1/fine_tuning/jobs", _body(training_file), format="json")

    assert resp.status_code == 200, resp.content
    assert (resp.json()["model"], resp.json()["organization_id"], resp.json()["status"]) == (
        "tiny-llama",
        "alice",
        "queued",
    )
    later = _after_insert(ctx.captured_queries)
    assert [s for s in later if 'FROM "auth_user"' in s or 'FROM "registry_basemodel"' in s] == []
    assert len(dispatched) == 2


def test_it_inserts_the_job_without_a_savepoint_unless_a_key_can_collide(user, llama, training_file, dispatched):
    spec = job_spec_from_payload(_body(training_file))
    counts = {}
    for key in (None, "key-1"):
        with CaptureQueriesContext(connection) as ctx:
            tuning_job_create(owner=user, spec=spec, idempotency_key=key)
        counts[key] = sum(1 for q in ctx.captured_queries if q["sql"].startswith("SAVEPOINT"))

    # The create's own transaction is a savepoint inside the test's; a key adds the INSERT's own.
    assert counts == {None: 1, "key-1": 2}
    job = TuningJob.objects.get(idempotency_key=None)
    assert job.status == TuningJob.Status.QUEUED
    assert list(JobEvent.objects.filter(job=job).values_list("message", flat=True).order_by("seq")) == [
        "Job created: lora on tiny-llama; validating files.",
        "Files validated; job queued.",
    ]


def test_it_still_refuses_a_key_that_already_created_a_job(
    user, llama, training_file, dispatched, django_capture_on_commit_callbacks
):
    spec = job_spec_from_payload(_body(training_file))
    with django_capture_on_commit_callbacks(execute=True):
        first = tuning_job_create(owner=user, spec=spec, idempotency_key="key-1")

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(IdempotencyError) as caught:
        tuning_job_create(owner=user, spec=spec, idempotency_key="key-1")

    assert caught.value.code == "idempotency_key_reused"
    assert first.id in str(caught.value)
    # The failed INSERT was rolled back to its savepoint: the transaction still works, one job stands.
    assert TuningJob.objects.filter(owner=user).count() == 1
    assert len(dispatched) == 1
