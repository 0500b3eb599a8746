"""Operator quotas over HTTP: each limit is a 4xx naming the field and the limit, and stores nothing.

Per-job limits (test hooks, steps, checkpoints, trained tokens) are 400 ``limit_exceeded`` /
``test_hooks_disabled`` at create; the per-owner storage quota is a 413 ``storage_quota_exceeded``
at upload. (The per-owner queued-jobs cap, a 429, is tested in ``apis/test_jobs_create.py``.)
"""

from __future__ import annotations

import pytest

from tests.tunings.apis.conftest import make_file
from tests.tunings.datasets.conftest import sample, stored_files, upload_multipart, upload_raw
from tunings.hyperparameters import train_config_values
from tunings.models import TrainingFile, TuningJob

pytestmark = pytest.mark.django_db

JOBS = "/v1/fine_tuning/jobs"
GOOD = "good_openai_chat.jsonl"


@pytest.fixture
def job_body(db, user):
    from registry.models import BaseModel

    llama = BaseModel.objects.create(name="tiny-llama", path="/models/tiny-llama", architecture="LlamaForCausalLM")
    return {"model": llama.name, "training_file": make_file(user, examples=50).id}


def limits(settings, **values):
    settings.TUNINGLAB = {**settings.TUNINGLAB, **values}


def create(client, body, **hyperparameters):
    return client.post(JOBS, {**body, "hyperparameters": hyperparameters}, format="json")


def error_of(response, status=400):
    assert response.status_code == status, response.content
    return response.json()["error"]


# --- per-job limits -------------------------------------------------------------------------


def test_it_refuses_the_step_delay_test_hook_unless_the_operator_allows_it(api_client, job_body, dispatched, settings):
    error = error_of(create(api_client, job_body, step_delay_s=0.5))
    assert (error["code"], error["param"]) == ("test_hooks_disabled", "hyperparameters.step_delay_s")
    assert "TUNINGLAB_ALLOW_TEST_HOOKS" in error["suggestion"]
    nested = {**job_body, "method": {"type": "supervised", "supervised": {"hyperparameters": {"step_delay_s": 1}}}}
    error = error_of(api_client.post(JOBS, nested, format="json"))
    assert error["param"] == "method.supervised.hyperparameters.step_delay_s"
    assert TuningJob.objects.count() == 0 and dispatched == []

    limits(settings, ALLOW_TEST_HOOKS=True)
    response = create(api_client, job_body, step_delay_s=0.5)
    assert response.status_code == 200, response.content
    assert TuningJob.objects.get().resolved_hyperparameters["step_delay_s"] == 0.5


def test_it_refuses_max_steps_above_the_operator_limit(api_client, job_body, dispatched, settings):
    error = error_of(create(api_client, job_body, max_steps=100_001))
    assert (error["code"], error["param"]) == ("limit_exceeded", "hyperparameters.max_steps")
    assert "100000" in error["message"]
    assert "at most 100000" in error["suggestion"] and "TUNINGLAB_MAX_STEPS" in error["suggestion"]
    assert create(api_client, job_body, max_steps=100_000).status_code == 200

    limits(settings, MAX_STEPS=500)
    error = error_of(create(api_client, job_body, max_steps=501))
    assert (error["code"], error["param"]) == ("limit_exceeded", "hyperparameters.max_steps")
    assert "at most 500" in error["suggestion"]
    assert TuningJob.objects.count() == 1


def test_it_refuses_an_epoch_run_whose_steps_pass_the_limit(api_client, job_body, dispatched, settings):
    limits(settings, MAX_STEPS=1000)
    # 50 examples at batch 1: 50 steps an epoch, 21 epochs = 1,050 steps.
    error = error_of(create(api_client, job_body, n_epochs=21, batch_size=1))
    assert (error["code"], error["param"]) == ("limit_exceeded", "hyperparameters.n_epochs")
    assert "1050 optimizer steps" in error["message"] and "at most 1000" in error["message"]
    assert "TUNINGLAB_MAX_STEPS" in error["suggestion"]
    assert create(api_client, job_body, n_epochs=20, batch_size=1).status_code == 200  # exactly 1,000


def test_it_refuses_checkpoints_more_often_than_the_per_run_limit(api_client, job_body, dispatched, settings):
    error = error_of(create(api_client, job_body, max_steps=1000, checkpoint_every=1))
    assert (error["code"], error["param"]) == ("limit_exceeded", "hyperparameters.checkpoint_every")
    assert "1000 checkpoints" in error["message"] and "at most 100" in error["message"]
    assert "at least 10" in error["suggestion"] and "TUNINGLAB_MAX_CHECKPOINTS_PER_RUN" in error["suggestion"]
    assert create(api_client, job_body, max_steps=1000, checkpoint_every=10).status_code == 200  # 100 exactly
    # A short run may checkpoint every step.
    assert create(api_client, job_body, max_steps=6, checkpoint_every=1).status_code == 200


def test_it_refuses_a_run_that_would_train_on_more_tokens_than_the_limit(
    api_client, job_body, user, dispatched, settings
):
    limits(settings, MAX_TRAINED_TOKENS=10_000)
    TrainingFile.objects.filter(id=job_body["training_file"]).update(token_estimate=1_000)  # 20 tokens an example
    error = error_of(create(api_client, job_body, n_epochs=11))
    assert (error["code"], error["param"]) == ("limit_exceeded", "hyperparameters.n_epochs")
    assert "11,000 tokens" in error["message"] and "10,000" in error["message"]
    assert "TUNINGLAB_MAX_TRAINED_TOKENS" in error["suggestion"]
    # By steps: 600 steps x batch 1 = 600 examples x 20 tokens = 12,000 tokens.
    error = error_of(create(api_client, job_body, max_steps=600, batch_size=1))
    assert (error["code"], error["param"]) == ("limit_exceeded", "hyperparameters.max_steps")
    assert TuningJob.objects.count() == 0 and dispatched == []
    assert create(api_client, job_body, n_epochs=10).status_code == 200


def test_it_scales_the_default_log_and_checkpoint_periods_with_the_run_length(user, job_body):
    row = TuningJob(method="lora", seed=0, training_file_id=job_body["training_file"])
    row.resolved_hyperparameters = {"max_steps": 300, "batch_size": 2}
    assert (train_config_values(row)["log_every"], train_config_values(row)["checkpoint_every"]) == (1, 50)
    row.resolved_hyperparameters = {"max_steps": 100_000, "batch_size": 2}
    # ~1,000 metrics lines and at most MAX_CHECKPOINTS_PER_RUN (100) checkpoints per run.
    assert (train_config_values(row)["log_every"], train_config_values(row)["checkpoint_every"]) == (100, 1000)
    row.resolved_hyperparameters = {"n_epochs": 3, "batch_size": 1}  # 50 examples: 150 steps
    assert train_config_values(row)["log_every"] == 1


# --- per-owner storage ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_it_refuses_an_upload_past_the_owners_storage_quota_and_stores_nothing(
    api_client, other_api_client, user, settings, how
):
    content = sample(GOOD)
    make_file(user)  # 1,234 bytes already stored
    limits(settings, MAX_STORED_BYTES_PER_USER=1234 + len(content) - 1)

    send = upload_multipart if how == "multipart" else (lambda client, name: upload_raw(client, sample(name)))
    error = error_of(send(api_client, GOOD), status=413)
    assert (error["code"], error["param"]) == ("storage_quota_exceeded", "file")
    assert "storage quota" in error["message"] and "Nothing was stored" in error["message"]
    assert "DELETE /v1/files" in error["suggestion"] and "TUNINGLAB_MAX_STORED_MB_PER_USER" in error["suggestion"]
    assert TrainingFile.objects.filter(owner=user).count() == 1
    assert stored_files(settings.DATA_DIR) == []  # no temp file, no blob

    # Another owner has their own quota; freeing space (deleting a file) lets the upload in.
    assert send(other_api_client, GOOD).status_code == 200
    TrainingFile.objects.filter(owner=user).delete()
    assert send(api_client, GOOD).status_code == 200
