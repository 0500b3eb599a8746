"""Creating jobs over HTTP: validation before queueing, ``auto`` resolution, dispatch after commit."""

from __future__ import annotations

import pytest

from registry.naming import fine_tuned_model_name
from tests.tunings.apis.conftest import make_file
from tuninglab import dispatch
from tunings.models import JobEvent, TuningJob
from workers.job_config import build_train_config

pytestmark = pytest.mark.django_db


def post(client, body, path="/v1/fine_tuning/jobs"):
    return client.post(path, body, format="json")


def test_it_creates_a_queued_job_in_the_openai_shape(create_job, llama, training_file, dispatched):
    job = create_job(suffix="Support-Bot", seed=7, metadata={"team": "search"})

    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "queued"
    assert job["model"] == "tiny-llama"
    assert job["training_file"] == training_file.id
    assert job["validation_file"] is None
    assert job["fine_tuned_model"] is None
    assert job["organization_id"] == "alice"
    assert job["suffix"] == "support-bot"
    assert job["user_provided_suffix"] == "support-bot"
    assert job["seed"] == 7
    assert job["metadata"] == {"team": "search"}
    assert job["error"] is None
    assert job["integrations"] == []
    assert job["result_files"] == []
    assert isinstance(job["created_at"], int)
    assert job["finished_at"] is None
    assert job["method"]["type"] == "supervised"
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert job["tuning_method"] == "lora"
    assert job["lora"] == {
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    assert job["progress"] == 0
    assert job["queue_position"] == 1
    assert job["priority"] == 0
    for key in ("loss", "eval_loss", "current_step", "total_steps", "learning_rate", "tokens_per_second"):
        assert key in job
    for key in ("eta_seconds", "attempt", "estimated_finish", "trained_tokens", "suggestion"):
        assert key in job

    row = TuningJob.objects.get(id=job["id"])
    assert row.status == "queued"
    messages = list(JobEvent.objects.filter(job=row).order_by("seq").values_list("message", flat=True))
    assert len(messages) == 2
    assert messages[0].startswith("Job created")
    assert messages[1] == "Files validated; job queued."
    assert dispatched == [(job["id"], "cpu")]


def test_it_resolves_auto_hyperparameters_at_create(create_job, user, dispatched):
    small = make_file(user, examples=20)
    job = create_job(training_file=small.id)
    # 20 examples / 8 → batch 2 (a power of two), 10 steps an epoch → 10 epochs for the 100-step
    # minimum; the fixture's base has no parameter count, so the multiplier stays 1.0.
    assert job["hyperparameters"] == {"n_epochs": 10, "batch_size": 2, "learning_rate_multiplier": 1.0}
    assert job["training_options"]["learning_rate"] == pytest.approx(2e-4)

    big = make_file(user, examples=20_000)
    job = create_job(training_file=big.id, tuning_method="full", lora=None)
    # 20,000 * 3 > 25,000 → 25,000 // 20,000 = 1 epoch; 0.2 % of 20,000 = 40 → 32 (cap).
    assert job["hyperparameters"] == {"n_epochs": 1, "batch_size": 32, "learning_rate_multiplier": 1.0}
    assert job["training_options"]["learning_rate"] == pytest.approx(2e-5)
    assert job["lora"] is None

    row = TuningJob.objects.get(id=job["id"])
    assert row.hyperparameters["n_epochs"] == "auto"  # the request is kept as sent


def test_it_keeps_explicit_hyperparameters_from_either_place(create_job):
    top = create_job(hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5})
    assert top["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert top["training_options"]["learning_rate"] == pytest.approx(1e-4)

    nested = create_job(
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}},
        tuning_method="qlora",
        lora={"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    )
    assert nested["hyperparameters"]["n_epochs"] == 4
    assert nested["hyperparameters"]["batch_size"] == 2
    assert nested["tuning_method"] == "qlora"
    assert nested["lora"] == {"rank": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": ["all-linear"]}


def test_it_picks_the_queue_from_resources_and_dispatches_once_after_commit(
    api_client, job_body, dispatched, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post(api_client, {**job_body, "resources": {"gpus": 2}})
    assert response.status_code == 200
    job_id = response.json()["id"]
    assert dispatched == []  # nothing is sent before the transaction commits
    assert len(callbacks) == 1
    callbacks[0]()
    assert dispatched == [(job_id, "gpu")]
    assert TuningJob.objects.get(id=job_id).queue == "gpu"

    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_client, {**job_body, "resources": {"gpus": 0}})
    assert dispatched[-1] == (response.json()["id"], "cpu")
    assert len(dispatched) == 2


def test_it_accepts_the_single_process_resources_that_actually_run(api_client, job_body, dispatched):
    for resources in ({"nproc": 1}, {"launcher": "auto"}, {"gpus": 1, "nproc": 1, "launcher": "single"}):
        response = post(api_client, {**job_body, "resources": resources})
        assert response.status_code == 200, response.json()
        assert TuningJob.objects.get(id=response.json()["id"]).resources == resources


def test_distributed_resources_now_make_a_distributed_job(api_client, job_body, dispatched):
    # resources.nproc > 1 alone means DDP; resources.launcher picks the engine (tests/tunings/test_distributed_api.py
    # covers the rest of the distributed field).
    for resources, strategy in (({"gpus": 4, "nproc": 4}, "ddp"), ({"launcher": "deepspeed"}, "deepspeed")):
        response = post(api_client, {**job_body, "resources": resources})
        assert response.status_code == 200, response.json()
        assert response.json()["distributed"]["strategy"] == strategy
    assert TuningJob.objects.count() == 2


def test_it_keeps_the_job_queued_when_no_worker_can_be_reached(
    api_client, job_body, monkeypatch, settings, django_capture_on_commit_callbacks, caplog
):
    # The broker refuses the message: the create still answers, the row stays queued for the sweeper.
    settings.TUNINGLAB_INPROCESS_WORKER = False

    def broker_down(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dispatch.app, "send_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_client, job_body)
    assert response.status_code == 200
    assert TuningJob.objects.get(id=response.json()["id"]).status == "queued"
    assert "it stays queued for the sweeper" in caplog.text


def test_it_answers_201_on_our_own_create_routes(api_client, job_body, dispatched):
    for path in ("/v1/tunings.create", "/v1/tunings/", "/v1/tunings"):
        response = post(api_client, job_body, path=path)
        assert response.status_code == 201, (path, response.json())
        assert response.json()["object"] == "fine_tuning.job"
    assert TuningJob.objects.count() == 3


@pytest.mark.parametrize(
    ("override", "status", "code", "param"),
    [
        ({"model": "gpt-nope"}, 400, "model_not_found", "model"),
        ({"model": None}, 400, "missing_required_parameter", "model"),
        ({"training_file": None}, 400, "missing_required_parameter", "training_file"),
        ({"training_file": "file-doesnotexist"}, 404, "not_found", "training_file"),
        ({"validation_file": "file-doesnotexist"}, 404, "not_found", "validation_file"),
        ({"hyperparameters": {"n_epochs": 0}}, 400, "invalid_hyperparameter", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": 51}}, 400, "invalid_hyperparameter", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": "many"}}, 400, "invalid_hyperparameter", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": True}}, 400, "invalid_hyperparameter", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 257}}, 400, "invalid_hyperparameter", "hyperparameters.batch_size"),
        ({"hyperparameters": {"batch_size": 2.5}}, 400, "invalid_hyperparameter", "hyperparameters.batch_size"),
        (
            {"hyperparameters": {"learning_rate_multiplier": 0}},
            400,
            "invalid_hyperparameter",
            "hyperparameters.learning_rate_multiplier",
        ),
        (
            {"hyperparameters": {"learning_rate_multiplier": 50.5}},
            400,
            "invalid_hyperparameter",
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"hyperparameters": {"epochs": 3}}, 400, "unknown_parameter", "hyperparameters.epochs"),
        ({"hyperparameters": {"lr_scheduler": "step"}}, 400, "invalid_hyperparameter", "hyperparameters.lr_scheduler"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}}},
            400,
            "invalid_hyperparameter",
            "method.supervised.hyperparameters.batch_size",
        ),
        ({"method": {"type": "dpo"}}, 400, "unsupported_method", "method.type"),
        (
            {"hyperparameters": {"n_epochs": 1}, "method": {"supervised": {"hyperparameters": {"n_epochs": 2}}}},
            400,
            "invalid_value",
            "hyperparameters",
        ),
        ({"tuning_method": "prefix"}, 400, "invalid_value", "tuning_method"),
        ({"lora": {"rank": 0}}, 400, "invalid_hyperparameter", "lora.rank"),
        ({"lora": {"rank": 257}}, 400, "invalid_hyperparameter", "lora.rank"),
        ({"lora": {"alpha": 0}}, 400, "invalid_hyperparameter", "lora.alpha"),
        ({"lora": {"dropout": 1.0}}, 400, "invalid_hyperparameter", "lora.dropout"),
        ({"lora": {"dropout": -0.1}}, 400, "invalid_hyperparameter", "lora.dropout"),
        ({"lora": {"target_modules": []}}, 400, "invalid_hyperparameter", "lora.target_modules"),
        ({"lora": {"target_modules": ["q_proj; rm -rf /"]}}, 400, "invalid_hyperparameter", "lora.target_modules"),
        ({"lora": {"scale": 2}}, 400, "unknown_parameter", "lora.scale"),
        ({"tuning_method": "full", "lora": {"rank": 8}}, 400, "invalid_value", "lora"),
        ({"seed": "seven"}, 400, "invalid_value", "seed"),
        ({"seed": -1}, 400, "invalid_value", "seed"),
        ({"suffix": "-bad"}, 400, "invalid_value", "suffix"),
        ({"suffix": "a" * 41}, 400, "invalid_value", "suffix"),
        ({"suffix": "has space"}, 400, "invalid_value", "suffix"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "invalid_value", "metadata"),
        ({"metadata": {"k": 1}}, 400, "invalid_value", "metadata.k"),
        ({"metadata": ["k"]}, 400, "invalid_type", "metadata"),
        ({"priority": 1000}, 400, "invalid_value", "priority"),
        ({"priority": 1}, 400, "invalid_value", "priority"),
        ({"priority": -101}, 400, "invalid_value", "priority"),
        ({"resources": {"gpus": -1}}, 400, "invalid_value", "resources.gpus"),
        ({"resources": {"tpus": 1}}, 400, "unknown_parameter", "resources.tpus"),
        ({"resources": {"nproc": 65}}, 400, "invalid_value", "resources.nproc"),
        ({"resources": {"nproc": 0}}, 400, "invalid_value", "resources.nproc"),
        ({"resources": {"nproc": "2"}}, 400, "invalid_value", "resources.nproc"),
        ({"resources": {"launcher": "mpirun"}}, 400, "invalid_value", "resources.launcher"),
        ({"integrations": [{"type": "wandb"}]}, 400, "unsupported", "integrations"),
        ({"learning_rate": 0.1}, 400, "unknown_parameter", "learning_rate"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(api_client, job_body, dispatched, override, status, code, param):
    response = post(api_client, {**job_body, **override})
    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert TuningJob.objects.count() == 0  # never a half-written row
    assert dispatched == []


def test_it_rejects_unusable_files(api_client, user, other_user, job_body, dispatched):
    broken = make_file(user, status="error")
    response = post(api_client, {**job_body, "training_file": broken.id})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "file_not_validated"
    assert response.json()["error"]["param"] == "training_file"
    assert response.json()["error"]["suggestion"]

    response = post(api_client, {**job_body, "validation_file": broken.id})
    assert response.json()["error"]["param"] == "validation_file"

    theirs = make_file(other_user)
    response = post(api_client, {**job_body, "training_file": theirs.id})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": f"No such file: {theirs.id}.",
        "type": "invalid_request_error",
        "param": "training_file",
        "code": "not_found",
    }

    other_purpose = make_file(user, purpose="assistants")
    response = post(api_client, {**job_body, "training_file": other_purpose.id})
    assert response.json()["error"]["code"] == "invalid_file_purpose"
    assert TuningJob.objects.count() == 0


def test_it_lists_registered_models_in_the_model_not_found_hint(api_client, job_body, dispatched):
    response = post(api_client, {**job_body, "model": "llama-70b"})
    assert "tiny-llama" in response.json()["error"]["suggestion"]


def test_it_requires_an_api_key(client, job_body):
    response = client.post("/v1/fine_tuning/jobs", job_body, content_type="application/json")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["type"] in ("authentication_error", "permission_error")


def test_it_names_the_fine_tuned_model_like_openai(create_job):
    with_suffix = TuningJob.objects.select_related("owner", "base_model").get(id=create_job(suffix="bot")["id"])
    assert fine_tuned_model_name(with_suffix) == f"ft:tiny-llama:alice:bot:{with_suffix.id}"
    plain = TuningJob.objects.select_related("owner", "base_model").get(id=create_job()["id"])
    assert fine_tuned_model_name(plain) == f"ft:tiny-llama:alice::{plain.id}"


def test_it_names_the_registered_model_from_model_name_else_suffix_else_base(create_job):
    assert create_job(model_name="support-bot", suffix="v2")["model_name"] == "support-bot"
    assert create_job(suffix="helpdesk")["model_name"] == "helpdesk"
    assert create_job()["model_name"] == "tiny-llama-ft"
    assert TuningJob.objects.filter(model_name="support-bot").count() == 1


@pytest.mark.parametrize("bad", ["Support Bot", "a/b", "-x", "x" * 65, 7])
def test_it_rejects_a_model_name_outside_the_name_pattern(api_client, job_body, dispatched, bad):
    response = post(api_client, {**job_body, "model_name": bad})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model_name"
    assert TuningJob.objects.count() == 0


def test_it_stores_engine_knobs_only_when_given(create_job):
    plain = TuningJob.objects.get(id=create_job()["id"])
    resolved = set(plain.resolved_hyperparameters)
    assert resolved == {"n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate"}

    tuned = create_job(
        hyperparameters={"max_steps": 7, "warmup_ratio": 0.1, "gradient_checkpointing": True, "lr_scheduler": "linear"}
    )
    assert tuned["hyperparameters"]["n_epochs"] is None  # bounded by max_steps instead
    assert tuned["training_options"] == {
        "max_steps": 7,
        "warmup_ratio": 0.1,
        "gradient_checkpointing": True,
        "lr_scheduler": "linear",
        "learning_rate": pytest.approx(2e-4),
    }


def test_it_refuses_both_n_epochs_and_max_steps(api_client, job_body, dispatched):
    response = post(api_client, {**job_body, "hyperparameters": {"n_epochs": 2, "max_steps": 10}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "hyperparameters.max_steps"


def test_it_creates_jobs_the_worker_can_turn_into_an_engine_config(create_job, user, settings):
    """Contract with workers.job_config: every job this API accepts maps onto a valid TrainConfig."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "ALLOW_TEST_HOOKS": True}  # step_delay_s below
    bodies = [
        {},
        {"tuning_method": "qlora", "lora": {"rank": 4, "target_modules": "all-linear"}},
        {"tuning_method": "full", "hyperparameters": {"max_steps": 3, "batch_size": 2}},
        {"hyperparameters": {"n_epochs": 1, "learning_rate_multiplier": 0.5, "step_delay_s": 0.1}},
    ]
    for body in bodies:
        job = TuningJob.objects.select_related("base_model", "training_file").get(id=create_job(**body)["id"])
        built = build_train_config(job, attempt=1)
        assert built.ignored == [], body
        assert built.config.method == job.method
        assert built.config.learning_rate == pytest.approx(job.resolved_hyperparameters["learning_rate"])


def test_it_lets_users_lower_their_priority_but_raise_it_only_to_the_operators_cap(
    api_client, create_job, job_body, settings
):
    assert create_job(priority=-100)["priority"] == -100
    response = post(api_client, {**job_body, "priority": 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "priority")
    assert "[-100, 0]" in error["message"]
    assert "operator" in error["suggestion"]

    settings.TUNINGLAB = {**settings.TUNINGLAB, "USER_MAX_PRIORITY": 10}
    assert create_job(priority=10)["priority"] == 10
    response = post(api_client, {**job_body, "priority": 11})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "priority")


def test_it_refuses_one_more_waiting_job_than_the_per_user_cap_with_429(
    api_client, other_api_client, create_job, job_body, other_user, dispatched, settings
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_QUEUED_JOBS_PER_USER": 2}
    first = create_job()["id"]
    create_job()

    response = post(api_client, {**job_body, "priority": -5})
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "too_many_queued_jobs"
    assert error["type"] == "rate_limit_error"
    assert "2 jobs waiting" in error["message"] and "at most 2" in error["message"]
    assert "cancel" in error["suggestion"]
    assert TuningJob.objects.count() == 2
    assert len(dispatched) == 2

    # The cap is per owner: another user still gets in.
    theirs = make_file(other_user)
    response = post(other_api_client, {**job_body, "training_file": theirs.id})
    assert response.status_code == 200, response.json()

    # A job that starts (or finishes) no longer waits, so its place frees up.
    TuningJob.objects.filter(id=first).update(status=TuningJob.Status.RUNNING)
    assert create_job()["status"] == "queued"
