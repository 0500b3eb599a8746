"""TuningJob row → TrainConfig mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_engine.errors import ConfigError
from workers.job_config import build_train_config, job_paths


@pytest.mark.django_db
def test_it_maps_hyperparameters_and_columns_to_engine_fields(make_job, user, settings):
    job = make_job(
        user,
        hyperparameters={
            "n_epochs": 2,
            "batch_size": 2,
            "learning_rate_multiplier": 2.0,
            "lr_scheduler": "linear",
            "step_delay_s": 0.5,
            "beta": 0.1,  # not an engine knob
            "output_dir": "/etc",  # never taken from the request
            "warmup_ratio": "auto",
        },
        lora_rank=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        seed=7,
        attempt=1,
    )
    built = build_train_config(job)
    cfg = built.config
    data_dir = Path(settings.DATA_DIR)
    assert cfg.num_epochs == 2 and cfg.max_steps is None
    assert cfg.batch_size == 2
    assert cfg.learning_rate == pytest.approx(4e-4)
    assert cfg.lr_scheduler == "linear"
    assert cfg.warmup_ratio == 0.0  # "auto" → engine default
    assert cfg.step_delay_s == 0.5
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.seed) == (4, 8.0, 0.0, 7)
    assert cfg.target_modules == ("q_proj", "v_proj")
    assert cfg.output_dir == str(data_dir / "jobs" / job.id / "run" / "attempt-1")
    assert cfg.stop_file == str(data_dir / "jobs" / job.id / "STOP")
    assert cfg.train_file == str(data_dir / job.training_file.storage_path)
    assert cfg.base_model_dir == job.base_model.path
    assert cfg.base_model_name == "tiny-llama"
    assert cfg.resume is False
    assert cfg.checkpoint_every == 50
    assert built.ignored == ["beta", "output_dir"]


@pytest.mark.django_db
def test_it_gives_each_attempt_its_own_dir_and_leaves_resume_to_the_runner(make_job, user):
    job = make_job(user, attempt=1)
    paths = job_paths(job.id)
    for attempt in (1, 2):
        cfg = build_train_config(job, attempt=attempt).config
        assert cfg.output_dir == str(paths.run_dir / f"attempt-{attempt}")
        assert cfg.metrics_file == str(paths.run_dir / f"attempt-{attempt}" / "metrics.jsonl")
        # Resume is set by the runner once it adopted a checkpoint into this attempt's dir.
        assert cfg.resume is False
    assert paths.earlier_checkpoint_roots(3) == [
        paths.run_dir / "checkpoints",
        paths.run_dir / "attempt-1" / "checkpoints",
        paths.run_dir / "attempt-2" / "checkpoints",
    ]


@pytest.mark.django_db
def test_it_sets_quant_bits_only_for_qlora(make_job, user):
    assert build_train_config(make_job(user, method="qlora")).config.quant_bits == 4
    assert build_train_config(make_job(user, method="lora")).config.quant_bits is None


@pytest.mark.django_db
def test_it_rejects_a_contradictory_config_naming_the_field(make_job, user):
    job = make_job(user, hyperparameters={"n_epochs": 1, "max_steps": 5})
    with pytest.raises(ConfigError) as exc:
        build_train_config(job)
    assert exc.value.code == "invalid_config"
    assert exc.value.param == "max_steps"


@pytest.mark.django_db
def test_it_scales_the_base_rate_of_the_method_when_only_a_multiplier_is_stored(make_job, user):
    # Full fine-tuning updates every weight: its base rate is 2e-5, a tenth of the adapters'.
    full = make_job(user, method="full", hyperparameters={"max_steps": 3, "learning_rate_multiplier": 3.0})
    assert build_train_config(full).config.learning_rate == pytest.approx(6e-5)
    lora = make_job(user, method="lora", hyperparameters={"max_steps": 3, "learning_rate_multiplier": 3.0})
    assert build_train_config(lora).config.learning_rate == pytest.approx(6e-4)


@pytest.mark.django_db
def test_it_keeps_a_stored_learning_rate_over_the_multiplier(make_job, user):
    job = make_job(user, method="full", hyperparameters={"learning_rate_multiplier": 3.0, "learning_rate": 1e-6})
    assert build_train_config(job).config.learning_rate == pytest.approx(1e-6)


@pytest.mark.django_db
def test_it_reports_engine_spellings_instead_of_applying_them(make_job, user):
    job = make_job(user, hyperparameters={"max_steps": 3, "num_epochs": 9, "lora_rank": 64, "weight_decay": 0.1})
    built = build_train_config(job)
    assert built.config.max_steps == 3 and built.config.num_epochs is None
    assert built.config.rank == job.lora_rank
    assert built.config.weight_decay == 0.0
    assert built.ignored == ["lora_rank", "num_epochs", "weight_decay"]
