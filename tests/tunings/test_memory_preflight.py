"""The create-time memory preflight: refused with the numbers and nothing written, warned, stored and shown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from django.urls import reverse

from lora_engine.distributed import DistributedSpec
from lora_engine.memory_estimate import MemoryEstimate, estimate_rank_memory
from registry.models import BaseModel
from tests.tunings.apis.conftest import make_file
from tunings.models import JobEvent, TuningJob
from tunings.services.preflight import WARN_FRACTION

pytestmark = pytest.mark.django_db

# A ~27M-parameter Llama (the shape of benchmarks/train_step.py's model): only config.json is read.
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 1024,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}
HYPERPARAMETERS = {"batch_size": 4, "max_seq_len": 256}
LORA = {"rank": 8, "target_modules": ["q_proj", "v_proj"]}
DDP = {"strategy": "ddp", "nproc_per_node": 2}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "llama-27m"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    return path


@pytest.fixture
def job_body(user, model_dir):
    llama = BaseModel.objects.create(name="llama-27m", path=str(model_dir), architecture="LlamaForCausalLM")
    return {
        "model": llama.name,
        "training_file": make_file(user, examples=50).id,
        "hyperparameters": HYPERPARAMETERS,
        "lora": LORA,
    }


def post(api_client, body, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return api_client.post("/v1/fine_tuning/jobs", body, format="json")


def expected(distributed: dict | None = None, **overrides) -> MemoryEstimate:
    """What the engine's estimate says for ``job_body``'s run (the numbers the API must show)."""
    knobs = {
        "method": "lora",
        "quant_bits": None,
        "rank": LORA["rank"],
        "target_modules": LORA["target_modules"],
        "batch_size": HYPERPARAMETERS["batch_size"],
        "grad_accum_steps": 1,
        "max_seq_len": HYPERPARAMETERS["max_seq_len"],
        "gradient_checkpointing": False,
        "spec": DistributedSpec.from_dict(distributed),
    }
    return estimate_rank_memory(LLAMA_CONFIG, **{**knobs, **overrides})


def test_it_refuses_a_job_that_does_not_fit_with_the_numbers_and_writes_nothing(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks
):
    need = expected(DDP)
    available = int(need.total_mb * 0.5)
    body = {**job_body, "distributed": DDP, "resources": {"memory_mb": available}}

    response = post(api_client, body, django_capture_on_commit_callbacks)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory" and error["param"] == "resources.memory_mb"
    assert f"{need.total_mb:,.0f} MiB per training process" in error["message"]
    assert f"{available:,} MiB available" in error["message"]
    assert f"weights {need.base_weights_mb:,.0f}" in error["message"]  # the breakdown, not only the total
    # DDP keeps the whole model on every process: the suggestion is to shard it, or to quantize it.
    assert "zero_stage 3" in error["suggestion"] and "qlora" in error["suggestion"]
    assert "gradient_checkpointing" in error["suggestion"]
    assert TuningJob.objects.count() == 0 and JobEvent.objects.count() == 0
    assert dispatched == []


def test_the_operators_memory_per_process_applies_when_the_job_gives_none(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks, settings
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "RANK_MEMORY_MB": 64}

    response = post(api_client, job_body, django_capture_on_commit_callbacks)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory" and error["param"] == "distributed"
    assert "64 MiB available (the workers' memory per process)" in error["message"]
    assert TuningJob.objects.count() == 0


def test_a_job_close_to_the_limit_is_created_with_a_warning_event_carrying_the_numbers(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks
):
    need = expected(DDP)
    available = math.ceil(need.total_mb / ((1 + WARN_FRACTION) / 2))  # between 85% and 100% used
    body = {**job_body, "distributed": DDP, "resources": {"memory_mb": available}}

    response = post(api_client, body, django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.json()
    job = response.json()
    warnings = list(JobEvent.objects.filter(job_id=job["id"], level=JobEvent.Level.WARNING))
    assert len(warnings) == 1
    share = round(100 * need.total_mb / available)
    assert f"{need.total_mb:,.0f} MiB per training process is {share}% of the {available:,} MiB" in warnings[0].message
    assert warnings[0].data["memory_estimate"]["total_mb"] == round(need.total_mb, 1)
    assert warnings[0].data["memory_estimate"]["available_mb"] == available
    assert len(dispatched) == 1


def test_a_job_that_fits_is_created_without_a_warning(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks
):
    need = expected(DDP)
    body = {**job_body, "distributed": DDP, "resources": {"memory_mb": math.ceil(need.total_mb / 0.5)}}

    response = post(api_client, body, django_capture_on_commit_callbacks)

    assert response.status_code == 200
    assert not JobEvent.objects.filter(level=JobEvent.Level.WARNING).exists()


def test_the_estimate_is_stored_on_the_job_and_shown_in_the_api_and_the_admin(
    api_client, admin_client, job_body, dispatched, django_capture_on_commit_callbacks
):
    zero3 = {"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2}
    shown = {}
    for name, layout in (("ddp", DDP), ("zero3", zero3)):
        response = post(api_client, {**job_body, "distributed": layout}, django_capture_on_commit_callbacks)
        assert response.status_code == 200, response.json()
        shown[name] = response.json()

    for name, layout in (("ddp", DDP), ("zero3", zero3)):
        estimate = shown[name]["memory_estimate"]
        need = expected(layout)
        assert estimate["total_mb"] == round(need.total_mb, 1)
        assert estimate["strategy"] == name and estimate["world_size"] == 2
        assert estimate["available_mb"] is None  # no limit known: stored and shown, nothing refused
        assert estimate["summary"] == need.describe()
        assert TuningJob.objects.get(id=shown[name]["id"]).memory_estimate == estimate
        fetched = api_client.get(f"/v1/fine_tuning/jobs/{shown[name]['id']}").json()
        assert fetched["memory_estimate"] == estimate
    # ZeRO-3 keeps half of the weights on each of its two processes; DDP all of them.
    weights = {name: job["memory_estimate"]["base_weights_mb"] for name, job in shown.items()}
    assert weights["zero3"] < 0.55 * weights["ddp"]

    html = admin_client.get(reverse("admin:tunings_tuningjob_change", args=[shown["ddp"]["id"]])).content.decode()
    assert "memory preflight (per rank)" in html.lower()
    assert f"~{expected(DDP).total_mb:,.0f} MiB per process" in html


def test_without_a_readable_config_json_there_is_no_estimate_and_the_job_is_still_created(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks, model_dir
):
    (model_dir / "config.json").unlink()
    body = {**job_body, "resources": {"memory_mb": 1}}  # would refuse anything, if there were an estimate

    response = post(api_client, body, django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.json()
    assert response.json()["memory_estimate"] == {}
    assert TuningJob.objects.get().memory_estimate == {}


def test_a_config_json_the_estimate_cannot_read_gives_no_estimate(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks, model_dir
):
    (model_dir / "config.json").write_text(json.dumps({"model_type": "mystery"}))

    response = post(api_client, job_body, django_capture_on_commit_callbacks)

    assert response.status_code == 200
    assert response.json()["memory_estimate"] == {}


def test_a_model_path_relative_to_the_data_dir_is_found(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks, model_dir, settings
):
    settings.DATA_DIR = model_dir.parent
    BaseModel.objects.filter(name=job_body["model"]).update(path=model_dir.name)

    response = post(api_client, job_body, django_capture_on_commit_callbacks)

    assert response.json()["memory_estimate"]["total_mb"] == round(expected().total_mb, 1)


@pytest.mark.parametrize("value", [0, -5, "2GB", 2.5, True, None])
def test_a_malformed_memory_mb_is_refused_naming_it(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks, value
):
    body = {**job_body, "resources": {"memory_mb": value}}

    response = post(api_client, body, django_capture_on_commit_callbacks)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "resources.memory_mb" and "MiB per training process" in error["message"]
    assert TuningJob.objects.count() == 0
