"""The hyperparameter catalogue against the engine, ``"auto"`` resolution and the row → TrainConfig values."""

from __future__ import annotations

import dataclasses

import pytest

from lora_engine.config import METHODS, PRECISIONS, SCHEDULERS, TrainConfig
from tuninglab.errors import InvalidRequestError
from tunings.hyperparameters import (
    AUTO,
    BASE_LEARNING_RATE,
    DEFAULT_CHECKPOINT_EVERY,
    HYPERPARAMETERS,
    resolve_hyperparameters,
    train_config_values,
    unknown_hyperparameters,
    validate_hyperparameters,
    validate_lora,
)
from tunings.models import TuningJob

ENGINE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def job(method: str = "lora", **resolved) -> TuningJob:
    """An unsaved row: the mapping reads columns only, no database needed."""
    return TuningJob(method=method, resolved_hyperparameters=resolved, target_modules=["q_proj"], seed=3)


def test_it_has_a_base_learning_rate_for_every_method_the_engine_and_the_model_know():
    assert set(BASE_LEARNING_RATE) == set(METHODS) == set(TuningJob.Method.values)


def test_it_offers_only_choices_the_engine_accepts():
    assert HYPERPARAMETERS["lr_scheduler"].choices == SCHEDULERS
    assert HYPERPARAMETERS["precision"].choices == PRECISIONS


def test_it_maps_every_hyperparameter_but_the_multiplier_onto_a_train_config_field():
    for name, spec in HYPERPARAMETERS.items():
        if name != "learning_rate_multiplier":
            assert (spec.engine_field or name) in ENGINE_FIELDS, name


def test_it_defaults_the_lora_shape_to_the_engine_defaults():
    engine = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert validate_lora(None, "lora") == {
        "rank": engine["rank"],
        "alpha": engine["alpha"],
        "dropout": engine["dropout"],
        "target_modules": list(engine["target_modules"]),
    }


def test_it_defaults_openai_hyperparameters_to_auto_and_omits_engine_knobs():
    assert validate_hyperparameters(None) == {"n_epochs": AUTO, "batch_size": AUTO, "learning_rate_multiplier": AUTO}


def test_it_refuses_names_outside_the_catalogue_naming_the_field():
    with pytest.raises(InvalidRequestError) as exc:
        validate_hyperparameters({"num_epochs": 3}, param="method.supervised.hyperparameters")
    assert (exc.value.code, exc.value.param) == ("unknown_parameter", "method.supervised.hyperparameters.num_epochs")


@pytest.mark.parametrize("method", METHODS)
def test_it_resolves_the_same_learning_rate_the_worker_would_derive(method):
    requested = validate_hyperparameters({"learning_rate_multiplier": 0.5})
    resolved = resolve_hyperparameters(hyperparameters=requested, tuning_method=method, example_count=100)
    assert resolved["learning_rate"] == pytest.approx(BASE_LEARNING_RATE[method] * 0.5)
    without_rate = {k: v for k, v in resolved.items() if k != "learning_rate"}
    assert train_config_values(job(method, **without_rate))["learning_rate"] == pytest.approx(resolved["learning_rate"])


def test_it_gives_a_full_job_with_only_a_multiplier_the_full_base_rate():
    values = train_config_values(job("full", n_epochs=1, learning_rate_multiplier=2.0))
    assert values["learning_rate"] == pytest.approx(2 * 2e-5)
    assert values["learning_rate"] != pytest.approx(2 * 2e-4)


def test_it_maps_row_values_to_engine_field_names_without_paths():
    values = train_config_values(
        job("qlora", n_epochs=2, batch_size=4, learning_rate_multiplier=1.0, learning_rate=2e-4, packing=True)
    )
    assert values == {
        "method": "qlora",
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.05,
        "seed": 3,
        "target_modules": ["q_proj"],
        "quant_bits": 4,
        "checkpoint_every": DEFAULT_CHECKPOINT_EVERY,
        "log_every": 1,  # a metrics line per step: the row has no dataset to size the run by
        "num_epochs": 2,
        "batch_size": 4,
        "packing": True,
        "learning_rate": 2e-4,
    }


def test_it_leaves_auto_and_none_to_the_engine_and_reports_unknown_keys():
    row = job(n_epochs=None, max_steps=5, warmup_ratio=AUTO, beta=0.1, epochs=3)
    values = train_config_values(row)
    assert "num_epochs" not in values and "warmup_ratio" not in values
    assert values["max_steps"] == 5
    assert unknown_hyperparameters(row) == ["beta", "epochs"]
