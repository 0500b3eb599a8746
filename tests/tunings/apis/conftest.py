"""Fixtures for the jobs API suite: a registered base model, processed training files, a dispatch recorder."""

from __future__ import annotations

import pytest


@pytest.fixture
def llama(db):
    """A registered base model. The API only needs the registration, not the weights, so no tiny model build."""
    from registry.models import BaseModel

    return BaseModel.objects.create(name="tiny-llama", path="/models/tiny-llama", architecture="LlamaForCausalLM")


def make_file(owner, *, status="processed", examples=50, purpose="fine-tune"):
    from tunings.models import TrainingFile

    return TrainingFile.objects.create(
        owner=owner,
        filename="train.jsonl",
        purpose=purpose,
        sha256="0" * 64,
        bytes=1234,
        storage_path="files/train.jsonl",
        format="openai_chat",
        example_count=examples,
        status=status,
    )


@pytest.fixture
def training_file(user):
    return make_file(user)


@pytest.fixture
def job_body(llama, training_file):
    return {"model": llama.name, "training_file": training_file.id}


@pytest.fixture
def create_job(api_client, job_body, dispatched, django_capture_on_commit_callbacks):
    """POST /v1/fine_tuning/jobs with ``job_body`` + overrides; returns the job JSON (asserts 200)."""

    def _create(**overrides):
        with django_capture_on_commit_callbacks(execute=True):
            response = api_client.post("/v1/fine_tuning/jobs", {**job_body, **overrides}, format="json")
        assert response.status_code == 200, response.json()
        return response.json()

    return _create
