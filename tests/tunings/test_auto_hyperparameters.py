"""The ``"auto"`` rule: epochs, batch size and learning rate from the data size and the model size."""

from __future__ import annotations

import pytest

from tuninglab.errors import InvalidRequestError
from tunings.hyperparameters import (
    BASE_LEARNING_RATE,
    MAX_LEARNING_RATE_MULTIPLIER,
    resolve_hyperparameters,
    train_config_values,
    validate_hyperparameters,
)
from tunings.models import TuningJob
from tunings.serializers.job_request import job_spec_from_payload

TINY = 557_696  # the tiny test Llama (lora_engine.tiny_model), as base_model_register counts it
SEVEN_B = 7_000_000_000


def auto(example_count: int, parameter_count: int = 0, method: str = "lora", **given) -> dict:
    return resolve_hyperparameters(
        hyperparameters=validate_hyperparameters(given),
        tuning_method=method,
        example_count=example_count,
        parameter_count=parameter_count,
    )


def test_it_gives_the_demo_data_on_the_tiny_model_enough_steps_and_a_small_model_rate():
    resolved = auto(96, TINY)  # lora_engine/assets/identity_mixed.jsonl
    # 96 / 8 = 12 → batch 16 (6 steps per epoch); 3 epochs are 18 steps < 100 → ceil(100 / 6) = 17 epochs.
    assert (resolved["batch_size"], resolved["n_epochs"]) == (16, 17)
    # (7e9 / 557,696) ** (1/3) = 23.24 → 23.2 (3 significant digits)
    assert resolved["learning_rate_multiplier"] == 23.2
    assert resolved["learning_rate"] == pytest.approx(23.2 * 2e-4)


@pytest.mark.parametrize(
    ("example_count", "batch_size", "n_epochs"),
    [
        (1, 1, 25),  # 1 step per epoch: capped at 25 epochs
        (10, 1, 10),  # 10 steps per epoch → 10 epochs for 100 steps
        (60, 8, 13),
        (1_000, 32, 4),  # 32 steps per epoch: 3 epochs are 96 steps → 4
        (5_000, 32, 3),  # 157 steps per epoch: the default 3
        (20_000, 32, 1),  # 3 epochs would be 60,000 examples > 25,000 → 25,000 // 20,000
    ],
)
def test_it_picks_batch_size_and_epochs_by_the_data_size(example_count, batch_size, n_epochs):
    resolved = auto(example_count, SEVEN_B)
    assert (resolved["batch_size"], resolved["n_epochs"]) == (batch_size, n_epochs)


def test_it_counts_steps_with_the_batch_size_and_accumulation_the_user_gave():
    # 60 examples in batches of 4 x 2 accumulated: 8 steps per epoch → 13 epochs.
    assert auto(60, TINY, batch_size=4, grad_accum_steps=2)["n_epochs"] == 13
    assert auto(60, TINY, batch_size=60)["n_epochs"] == 25  # 1 step per epoch


def test_it_lowers_the_rate_as_the_model_grows():
    multipliers = [auto(100, p)["learning_rate_multiplier"] for p in (TINY, 125_000_000, SEVEN_B, 70_000_000_000)]
    assert multipliers == sorted(multipliers, reverse=True)
    assert multipliers[2] == 1.0  # the base rates are the usual ones for a 7B model
    assert multipliers[3] == 0.464  # (1/10) ** (1/3)


def test_it_keeps_the_base_rate_when_the_model_size_is_unknown():
    assert auto(100, 0)["learning_rate_multiplier"] == 1.0
    assert auto(100)["learning_rate"] == BASE_LEARNING_RATE["lora"]


def test_it_never_goes_above_the_multiplier_a_request_may_send():
    assert auto(100, 10)["learning_rate_multiplier"] == MAX_LEARNING_RATE_MULTIPLIER


@pytest.mark.parametrize("parameter_count", [TINY, SEVEN_B, 70_000_000_000, 10])
def test_it_resolves_to_values_a_request_may_send_back(parameter_count):
    resolved = auto(60, parameter_count)
    again = {k: resolved[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    assert validate_hyperparameters(again) == again


def test_it_leaves_given_values_alone():
    resolved = auto(60, TINY, n_epochs=2, batch_size=3, learning_rate_multiplier=0.5)
    assert (resolved["n_epochs"], resolved["batch_size"], resolved["learning_rate_multiplier"]) == (2, 3, 0.5)
    assert auto(60, TINY, max_steps=7)["n_epochs"] is None


def test_it_applies_the_size_rule_to_full_fine_tuning_from_its_own_base_rate():
    assert auto(60, TINY, method="full")["learning_rate"] == pytest.approx(23.2 * BASE_LEARNING_RATE["full"])


def test_it_passes_select_through_to_the_engine():
    assert validate_hyperparameters({"select": "best"})["select"] == "best"
    row = TuningJob(method="lora", resolved_hyperparameters={"n_epochs": 1, "select": "best"}, seed=0)
    assert train_config_values(row)["select"] == "best"
    with pytest.raises(InvalidRequestError) as exc:
        validate_hyperparameters({"select": "first"})
    assert exc.value.param == "hyperparameters.select"
    assert "select" not in validate_hyperparameters({})  # not sent: the engine's default, "last"


def test_it_refuses_select_best_without_a_validation_file():
    payload = {"model": "tiny-llama", "training_file": "file-a", "hyperparameters": {"select": "best"}}
    with pytest.raises(InvalidRequestError) as exc:
        job_spec_from_payload(payload)
    assert (exc.value.code, exc.value.param) == ("invalid_hyperparameter", "hyperparameters.select")
    spec = job_spec_from_payload({**payload, "validation_file": "file-b"})
    assert spec.hyperparameters["select"] == "best"
