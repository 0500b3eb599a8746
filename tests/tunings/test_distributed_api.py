"""The create-job API's ``distributed`` field and ``resources`` shorthand: stored, shown, refused with reasons."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from django.utils.html import escape
from tuninglab_sdk.resources._tunings_common import create_body

from lora_engine.distributed import DistributedSpec
from registry.models import BaseModel
from tests.tunings.apis.conftest import make_file
from tunings.models import JobEvent, TuningJob
from workers.job_config import build_train_config

pytestmark = pytest.mark.django_db

ONE_PROCESS = {
    "strategy": "none",
    "zero_stage": None,
    "offload_optimizer": False,
    "offload_params": False,
    "nproc_per_node": 1,
    "nnodes": 1,
    "rdzv_endpoint": None,
}


@pytest.fixture
def job_body(user):
    """A registered base model (no weights: the API only needs the row) and a processed 50-example file."""
    llama = BaseModel.objects.create(name="tiny-llama", path="/models/tiny-llama", architecture="LlamaForCausalLM")
    return {"model": llama.name, "training_file": make_file(user, examples=50).id}


@pytest.fixture
def create_job(api_client, job_body, dispatched, django_capture_on_commit_callbacks):
    """POST a job with ``job_body`` + overrides; the job JSON (asserts 200)."""

    def create(**overrides):
        with django_capture_on_commit_callbacks(execute=True):
            response = post(api_client, {**job_body, **overrides})
        assert response.status_code == 200, response.json()
        return response.json()

    return create


def post(client, body):
    return client.post("/v1/fine_tuning/jobs", body, format="json")


def spec(**fields) -> dict:
    return {**ONE_PROCESS, **fields}


def test_it_stores_and_shows_a_ddp_job_with_its_full_spec(create_job):
    # 50 examples: "auto" batch size is 8, which two processes split 4 + 4.
    job = create_job(distributed={"strategy": "ddp", "nproc_per_node": 2})

    assert job["distributed"] == spec(strategy="ddp", nproc_per_node=2)
    assert job["launch_config"] == {}  # nothing launched yet
    assert job["hyperparameters"]["batch_size"] == 8
    row = TuningJob.objects.get(id=job["id"])
    assert row.distributed == spec(strategy="ddp", nproc_per_node=2)
    cfg = build_train_config(row).config
    assert (cfg.distributed.strategy, cfg.distributed.world_size, cfg.batch_size) == ("ddp", 2, 8)
    created = JobEvent.objects.filter(job=row).order_by("seq").first()
    assert created.message == "Job created: lora on tiny-llama (ddp, 2 processes); validating files."


def test_it_fills_the_deepspeed_defaults(create_job):
    job = create_job(distributed={"strategy": "deepspeed", "nproc_per_node": 2, "offload_optimizer": True})
    assert job["distributed"] == spec(strategy="deepspeed", zero_stage=2, nproc_per_node=2, offload_optimizer=True)


def test_a_single_process_job_stores_nothing_and_shows_the_defaults(create_job):
    job = create_job()
    assert job["distributed"] == ONE_PROCESS
    assert TuningJob.objects.get(id=job["id"]).distributed == {}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"nproc": 2}, spec(strategy="ddp", nproc_per_node=2)),
        ({"nproc": 4, "gpus": 4}, spec(strategy="ddp", nproc_per_node=4)),
        ({"nproc": 2, "launcher": "torchrun"}, spec(strategy="ddp", nproc_per_node=2)),
        ({"nproc": 2, "launcher": "deepspeed"}, spec(strategy="deepspeed", zero_stage=2, nproc_per_node=2)),
        ({"launcher": "torchrun"}, spec(strategy="ddp", nproc_per_node=1)),
        ({"nproc": 1, "launcher": "single"}, ONE_PROCESS),
        ({"nproc": 1}, ONE_PROCESS),
        ({"launcher": "auto"}, ONE_PROCESS),
    ],
)
def test_it_maps_the_resources_shorthand_to_a_spec(create_job, resources, expected):
    job = create_job(resources=resources)
    assert job["distributed"] == expected
    row = TuningJob.objects.get(id=job["id"])
    assert row.resources == resources  # the request's resources stay as sent
    assert row.distributed == ({} if expected == ONE_PROCESS else expected)


def test_resources_may_repeat_what_the_spec_says(create_job):
    job = create_job(
        resources={"nproc": 2, "launcher": "torchrun", "gpus": 2},
        distributed={"strategy": "fsdp", "nproc_per_node": 2},
    )
    assert job["distributed"] == spec(strategy="fsdp", nproc_per_node=2)
    assert job["queue"] == "gpu"


@pytest.mark.parametrize(("world", "batch"), [(2, 8), (3, 9), (4, 8), (16, 16)])
def test_auto_batch_size_is_a_multiple_of_the_processes(create_job, world, batch):
    # "auto" is 8 for 50 examples; the processes must split it evenly, so it rounds up.
    job = create_job(distributed={"strategy": "ddp", "nproc_per_node": world})
    assert job["hyperparameters"]["batch_size"] == batch
    assert batch % world == 0


REFUSALS = [
    # (request overrides, code, param, text in the message, text in the suggestion)
    (
        {"tuning_method": "qlora", "distributed": {"strategy": "fsdp", "nproc_per_node": 2}},
        "invalid_distributed",
        "distributed.strategy",
        "QLoRA cannot be trained with FSDP",
        "Use strategy 'ddp'",
    ),
    (
        {"tuning_method": "qlora", "distributed": {"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2}},
        "invalid_distributed",
        "distributed.zero_stage",
        "QLoRA cannot be trained with ZeRO-3",
        "zero_stage 2 or 3",
    ),
    (
        {"hyperparameters": {"batch_size": 3}, "distributed": {"strategy": "ddp", "nproc_per_node": 2}},
        "invalid_distributed",
        "hyperparameters.batch_size",
        "batch_size 3 must be a multiple of the 2 processes",
        "multiple of 2 (e.g. 4)",
    ),
    (
        {
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 10}}},
            "distributed": {"strategy": "deepspeed", "nproc_per_node": 4},
        },
        "invalid_distributed",
        "method.supervised.hyperparameters.batch_size",
        "batch_size 10 must be a multiple of the 4 processes",
        "multiple of 4 (e.g. 12)",
    ),
    (
        {"distributed": {"strategy": "ddp", "nproc_per_node": 2, "nnodes": 2}},
        "unsupported_resource",
        "distributed.nnodes",
        "multi-node training is not enabled",
        "docs/distributed.md",
    ),
    (
        {"distributed": {"strategy": "ddp", "gpus": 2}},
        "invalid_distributed",
        "distributed.gpus",
        "unknown distributed field(s): gpus",
        "docs/distributed.md",
    ),
    (
        {"distributed": {"strategy": "horovod"}},
        "invalid_distributed",
        "distributed.strategy",
        "strategy must be one of none, ddp, fsdp, deepspeed",
        "docs/distributed.md",
    ),
    (
        {"distributed": {"strategy": "ddp", "nproc_per_node": 2, "zero_stage": 2}},
        "invalid_distributed",
        "distributed.zero_stage",
        "zero_stage is only used with strategy 'deepspeed'",
        "drop it for the other strategies",
    ),
    (
        {"distributed": {"strategy": "deepspeed", "nproc_per_node": 2, "zero_stage": 1}},
        "invalid_distributed",
        "distributed.zero_stage",
        "zero_stage must be one of 2, 3",
        "zero_stage 2 or 3",
    ),
    (
        {"distributed": {"strategy": "deepspeed", "nproc_per_node": 2, "offload_params": True}},
        "invalid_distributed",
        "distributed.offload_params",
        "offload_params needs zero_stage 3",
        "zero_stage 3",
    ),
    (
        {"distributed": {"strategy": "fsdp", "nproc_per_node": 2, "offload_optimizer": True}},
        "invalid_distributed",
        "distributed.offload_optimizer",
        "only available with strategy 'deepspeed'",
        "set strategy 'deepspeed'",
    ),
    (
        {"distributed": {"strategy": "ddp", "nproc_per_node": "2"}},
        "invalid_distributed",
        "distributed.nproc_per_node",
        "nproc_per_node must be an integer in 1..64",
        "1..64",
    ),
    (
        {"distributed": {"strategy": "none", "nproc_per_node": 2}},
        "invalid_distributed",
        "distributed.strategy",
        "2 processes need a strategy",
        "Use strategy 'ddp'",
    ),
    (
        {"distributed": {"strategy": "ddp", "nproc_per_node": 2, "rdzv_endpoint": "$(id):29500"}},
        "invalid_distributed",
        "distributed.rdzv_endpoint",
        "rdzv_endpoint must be host:port",
        "host:port",
    ),
    ({"distributed": "ddp"}, "invalid_type", "distributed", "distributed must be an object", "docs/distributed.md"),
    (
        {"resources": {"launcher": "deepspeed"}, "distributed": {"strategy": "fsdp", "nproc_per_node": 2}},
        "invalid_distributed",
        "resources.launcher",
        "resources.launcher 'deepspeed' contradicts distributed.strategy 'fsdp', which runs under 'torchrun'",
        "Drop resources.launcher",
    ),
    (
        {"resources": {"launcher": "single", "nproc": 2}},
        "invalid_distributed",
        "resources.launcher",
        "'single' runs one process, but resources.nproc is 2",
        "or set nproc 1",
    ),
    (
        {"resources": {"nproc": 4}, "distributed": {"strategy": "ddp", "nproc_per_node": 2}},
        "invalid_distributed",
        "resources.nproc",
        "resources.nproc 4 contradicts distributed.nproc_per_node 2",
        "Drop resources.nproc",
    ),
    (
        {"hyperparameters": {"precision": "fp16"}, "distributed": {"strategy": "fsdp", "nproc_per_node": 2}},
        "invalid_distributed",
        "hyperparameters.precision",
        "fp16 with FSDP",
        'precision "bf16"',
    ),
    ({"resources": {"nproc": 65}}, "invalid_value", "resources.nproc", "[1, 64]", "one per GPU"),
    ({"resources": {"nproc": 0}}, "invalid_value", "resources.nproc", "[1, 64]", "omit it for one process"),
    ({"resources": {"launcher": "mpirun"}}, "invalid_value", "resources.launcher", "'mpirun'", "Omit it"),
]


@pytest.mark.parametrize(("override", "code", "param", "message", "suggestion"), REFUSALS)
def test_it_refuses_what_cannot_train_naming_the_field(
    api_client, job_body, dispatched, override, code, param, message, suggestion
):
    response = post(api_client, {**job_body, **override})
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert message in error["message"]
    assert suggestion in error["suggestion"]
    assert TuningJob.objects.count() == 0
    assert dispatched == []


def test_the_refusals_say_nothing_is_unavailable(api_client, job_body, dispatched):
    # The old single-process wording must be gone now that launchers run.
    for resources in ({"nproc": 65}, {"launcher": "mpirun"}):
        error = post(api_client, {**job_body, "resources": resources}).json()["error"]
        assert "not available" not in json.dumps(error)


def test_multi_node_is_accepted_once_the_operator_enables_it(create_job, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MULTI_NODE": True}
    job = create_job(distributed={"strategy": "ddp", "nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": "n0:29500"})
    assert job["distributed"] == spec(strategy="ddp", nnodes=2, rdzv_endpoint="n0:29500")
    assert job["hyperparameters"]["batch_size"] == 8


def test_more_processes_than_the_largest_batch_are_refused(api_client, job_body, dispatched, settings):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MULTI_NODE": True}
    response = post(api_client, {**job_body, "distributed": {"strategy": "ddp", "nproc_per_node": 64, "nnodes": 5}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_distributed", "distributed.nproc_per_node")
    assert "320 processes" in error["message"] and "256" in error["message"]
    assert error["suggestion"] == "Use at most 256 processes in all."
    assert TuningJob.objects.count() == 0


LAUNCHED = {
    "launcher": "deepspeed",
    "world_size": 2,
    "argv": [
        "/srv/tuninglab/.venv/bin/python",
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus=2",
        "--master_port=29511",
        "--module",
        "lora_engine.train",
        "attempt-1.json",
    ],
    "env": {"DS_ACCELERATOR": "cpu"},
    "deepspeed_config": {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}},
}


def test_the_job_shows_its_launch_without_the_servers_interpreter_path(api_client, create_job):
    job = create_job(distributed={"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2})
    TuningJob.objects.filter(id=job["id"]).update(launch_config=LAUNCHED)

    shown = api_client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["launch_config"]
    assert shown == {**LAUNCHED, "argv": ["python", *LAUNCHED["argv"][1:]]}
    listed = api_client.get("/v1/fine_tuning/jobs").json()["data"][0]
    assert listed["launch_config"]["argv"][0] == "python"
    assert listed["distributed"]["zero_stage"] == 3


def test_the_admin_job_page_shows_the_spec_and_the_launch(admin_client, create_job):
    job = create_job(distributed={"strategy": "deepspeed", "zero_stage": 3, "nproc_per_node": 2})
    TuningJob.objects.filter(id=job["id"]).update(launch_config=LAUNCHED)

    html = admin_client.get(reverse("admin:tunings_tuningjob_change", args=[job["id"]])).content.decode()
    assert "Distributed" in html
    full_spec = DistributedSpec(strategy="deepspeed", zero_stage=3, nproc_per_node=2).to_dict()
    assert escape(json.dumps(full_spec, indent=2, sort_keys=True)) in html
    assert "deepspeed on 2 process(es) (deepspeed launcher)" in html
    # The command as one line (the admin's reader may paste it), and the DeepSpeed JSON pretty-printed.
    assert escape(" ".join(LAUNCHED["argv"])) in html
    assert escape(json.dumps(LAUNCHED["deepspeed_config"], indent=2, sort_keys=True)) in html


def test_the_admin_job_page_of_a_job_not_launched_yet(admin_client, create_job):
    job = create_job()
    html = admin_client.get(reverse("admin:tunings_tuningjob_change", args=[job["id"]])).content.decode()
    assert "none on 1 process(es) (single launcher)" in html
    assert "- (not launched yet)" in html


_NO_OPTIONS = {
    "model": "tiny-llama",
    "training_file": "file-1",
    "validation_file": None,
    "method": None,
    "hyperparameters": None,
    "suffix": None,
    "seed": None,
    "metadata": None,
    "lora": None,
    "priority": None,
    "resources": None,
}


def test_the_sdk_sends_the_distributed_field():
    body = create_body(**_NO_OPTIONS, distributed={"strategy": "fsdp", "nproc_per_node": 2})
    assert body["distributed"] == {"strategy": "fsdp", "nproc_per_node": 2}
    assert "distributed" not in create_body(**_NO_OPTIONS)


@pytest.mark.parametrize("layout", [{"strategy": "fsdp"}, {"strategy": "deepspeed", "zero_stage": 3}])
def test_select_best_is_refused_where_parameters_are_sharded(api_client, job_body, dispatched, user, layout):
    body = {
        **job_body,
        "validation_file": make_file(user, examples=20).id,
        "hyperparameters": {"select": "best"},
        "distributed": {**layout, "nproc_per_node": 2},
    }
    response = post(api_client, body)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_distributed", "hyperparameters.select")
    assert 'select "best" is not available when parameters are sharded' in error["message"]
    assert TuningJob.objects.count() == 0
    # ... and with DDP the same body is a job.
    assert post(api_client, {**body, "distributed": {"strategy": "ddp", "nproc_per_node": 2}}).status_code == 200
