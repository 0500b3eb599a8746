"""The job-level ``select`` hyperparameter reaches ``TrainConfig.select``."""

from __future__ import annotations

import pytest

from lora_engine.errors import ConfigError
from tests.workers.conftest import make_training_file
from workers.job_config import build_train_config


@pytest.mark.django_db
def test_it_passes_select_best_with_the_validation_file_to_the_engine(make_job, user, settings):
    validation = make_training_file(user, settings, name="val.jsonl", content=b'{"text": "a b c"}\n')
    job = make_job(user, hyperparameters={"n_epochs": 1, "select": "best"}, validation_file=validation)
    cfg = build_train_config(job).config
    assert cfg.select == "best"
    assert cfg.validation_file and cfg.validation_file.endswith(validation.storage_path)


@pytest.mark.django_db
def test_it_leaves_the_engine_default_last_when_select_is_not_given(make_job, user):
    assert build_train_config(make_job(user, hyperparameters={"n_epochs": 1})).config.select == "last"


@pytest.mark.django_db
def test_it_refuses_select_best_without_validation_data_naming_select(make_job, user):
    # A row the API would refuse (400) but an old or copied row may hold.
    job = make_job(user, hyperparameters={"n_epochs": 1, "select": "best"})
    with pytest.raises(ConfigError) as exc:
        build_train_config(job)
    assert exc.value.param == "select"
