"""The MLflow mirror against the embedded store (SQLite + local artifacts under DATA_DIR/mlflow)."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone
from mlflow import MlflowClient

from registry.models import Alias, Evaluation, ModelVersion, RunStatus
from registry.services.mlflow_sync import TAG_VERSION_ID, mlflow_tracking_uri, registry_sync
from registry.services.versions import model_version_create_from_job
from tests.helpers import free_port
from tests.workers.conftest import fake_engine, make_training_file  # noqa: F401 - fake_engine is a fixture
from tuninglab import dispatch
from tuninglab.task_names import SYNC_REGISTRY
from tunings.models import TuningJob
from workers.runner import run_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def mlflow_enabled(settings):
    """MLflow on, at the embedded default store (the suite's conftest turns it off)."""
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_ENABLED": True, "MLFLOW_TRACKING_URI": ""}


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An embedded store whose tables exist: MLflow creates them in seconds, once per session here."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_on(mlflow_enabled, settings, empty_mlflow_store):
    """MLflow on, its embedded store under this test's DATA_DIR already made (a copy of an empty one).

    The runner test below starts from nothing instead, as a fresh install does.
    """
    store_dir = Path(settings.DATA_DIR) / "mlflow"
    store_dir.mkdir()
    shutil.copyfile(empty_mlflow_store, store_dir / "mlflow.db")


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, list, str]]:
    """Tasks sent by name, recorded instead of reaching a broker or the in-process worker."""
    calls: list[tuple[str, list, str]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: calls.append((name, list(args), queue)))
    return calls


def client() -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_tracking_uri(), registry_uri=mlflow_tracking_uri())


def metrics_line(step: int, loss: float, **extra) -> str:
    return json.dumps({"type": "metrics", "step": step, "total_steps": 3, "loss": loss, "lr": 1e-4, **extra}) + "\n"


def version_of(job, tmp_path: Path, *, payload: bytes = b"weights", kind: str = "adapter") -> ModelVersion:
    """Register ``job``'s result as the runner does: a result dir and the run's metrics.jsonl."""
    src = tmp_path / f"result-{job.id}"
    src.mkdir()
    if kind == "adapter":
        (src / "adapter_config.json").write_text('{"r": 4}')
        (src / "adapter_model.safetensors").write_bytes(payload)
    else:
        (src / "config.json").write_text('{"model_type": "llama"}')
        (src / "model.safetensors").write_bytes(payload)
    metrics_file = tmp_path / f"metrics-{job.id}.jsonl"
    metrics_file.write_text(metrics_line(1, 2.0) + metrics_line(2, 1.0, eval_loss=1.5))
    return model_version_create_from_job(
        job=job,
        adapter_dir=src,
        metrics={"steps": 2, "final_loss": 1.0},
        config={"learning_rate": 2e-4, "rank": 4, "metrics_file": str(metrics_file), "output_dir": "/x"},
        metrics_file=metrics_file,
        device="cpu",
    )


def mirrored(version: ModelVersion) -> ModelVersion:
    version.refresh_from_db()
    assert version.mlflow_error == "" and version.mlflow_synced_at is not None, version.mlflow_error
    return version


def runs_of(version: ModelVersion) -> list:
    experiment = client().get_experiment_by_name(f"u{version.owner_id}.{version.registered_model.name}")
    return client().search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_VERSION_ID}` = '{version.id}'")


def test_it_defaults_to_an_embedded_store_under_the_data_dir_and_a_configured_uri_wins(settings):
    assert mlflow_tracking_uri() == f"sqlite:///{settings.DATA_DIR}/mlflow/mlflow.db"
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    assert mlflow_tracking_uri() == "http://mlflow.internal:5000"


def test_it_does_nothing_while_mlflow_is_off(make_job, settings, tmp_path):
    version = version_of(make_job(), tmp_path)
    report = registry_sync()
    assert report.enabled is False and report.ok
    version.refresh_from_db()
    assert version.mlflow_synced_at is None and version.mlflow_run_id == ""
    assert not (Path(settings.DATA_DIR) / "mlflow").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_it_mirrors_a_succeeded_job_as_a_run_with_params_step_metrics_logs_and_the_adapter(
    mlflow_enabled,
    sent,
    fake_engine,  # noqa: F811 - the fixture imported above
    fake_base_model,
    user,
    settings,
    tmp_path,
):
    fake_engine([{"stderr": "loading the base model"}, {"train": {"steps": 3}}, {"adapter": True}, {"done": True}])
    job = TuningJob.objects.create(
        owner=user,
        base_model=fake_base_model,
        training_file=make_training_file(user, settings),
        resolved_hyperparameters={"max_steps": 3, "batch_size": 2},
        lora_rank=4,
        lora_alpha=8.0,
        target_modules=["q_proj", "v_proj"],
        seed=7,
        model_name="support-bot",
        status=TuningJob.Status.QUEUED,
    )
    # The fake engine prints metrics but writes no metrics.jsonl; the real one appends every
    # attempt's lines. Attempt 2 resumed at step 2 and re-ran it: its value is the one kept.
    run_dir = Path(settings.DATA_DIR) / "jobs" / job.id / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(
        metrics_line(1, 2.0) + metrics_line(2, 1.25) + metrics_line(2, 0.9) + metrics_line(3, 0.5, eval_loss=0.7)
    )

    assert run_job(job.id, worker_id="w1", queue="cpu") == job.id
    job.refresh_from_db()
    assert job.status == TuningJob.Status.SUCCEEDED, job.error
    assert (SYNC_REGISTRY, [], "cpu") in sent  # the runner only asks for a sync

    report = registry_sync()
    assert report.ok and len(report.versions) == 1, report
    version = mirrored(ModelVersion.objects.get(job=job))
    run = client().get_run(version.mlflow_run_id)
    params, tags = run.data.params, run.data.tags
    assert params["base_model"] == "fake-llama"
    assert params["base_model_content_hash"] == fake_base_model.content_hash != ""
    assert (params["method"], params["seed"], params["kind"]) == ("lora", "7", "adapter")
    assert (params["lora_rank"], params["lora_alpha"]) == ("4", "8.0")
    assert json.loads(params["lora_target_modules"]) == ["q_proj", "v_proj"]
    assert (params["hp.max_steps"], params["hp.batch_size"]) == ("3", "2")
    assert params["config.rank"] == "4" and "config.output_dir" not in params
    assert params["training_file"] == job.training_file_id
    assert tags[TAG_VERSION_ID] == version.id and tags["tuninglab.job_id"] == job.id
    assert (tags["tuninglab.owner"], tags["tuninglab.model"], tags["tuninglab.version"]) == (
        "alice",
        "support-bot",
        "1",
    )
    assert run.info.status == "FINISHED"

    history = client().get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 2.0), (2, 0.9), (3, 0.5)]
    assert [m.value for m in client().get_metric_history(run.info.run_id, "eval_loss")] == [0.7]
    assert run.data.metrics["summary/final_loss"] == 0.5

    adapter = Path(client().download_artifacts(run.info.run_id, "adapter", str(tmp_path)))
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"fake-weights"
    assert json.loads((adapter / "adapter_config.json").read_text()) == {"r": 4, "lora_alpha": 8.0}
    log_file = Path(client().download_artifacts(run.info.run_id, "logs/attempt-1.log", str(tmp_path)))
    assert "loading the base model" in log_file.read_text()

    registered = client().get_model_version(f"u{user.id}.support-bot", version.mlflow_version)
    assert (str(registered.version), registered.run_id) == ("1", run.info.run_id)
    assert registered.source == f"{run.info.artifact_uri}/adapter"
    assert registered.tags[TAG_VERSION_ID] == version.id


def test_it_mirrors_the_alias_the_database_says_and_follows_its_moves(mlflow_on, make_job, tmp_path):
    v1, v2 = (version_of(make_job(model_name="bot"), tmp_path, payload=p) for p in (b"one", b"two"))
    alias = Alias.objects.create(registered_model=v1.registered_model, alias="production", version=v1)
    assert registry_sync().ok
    v1, v2, alias = mirrored(v1), mirrored(v2), Alias.objects.get(pk=alias.pk)
    name = f"u{v1.owner_id}.bot"
    assert str(client().get_model_version_by_alias(name, "production").version) == v1.mlflow_version == "1"
    assert alias.mlflow_synced_at == alias.updated_at

    # A move as the alias services make it: the row changes and its mirror is pending again.
    alias.version, alias.mlflow_synced_at = v2, None
    alias.save(update_fields=["version", "mlflow_synced_at", "updated_at"])
    report = registry_sync()
    assert report.aliases == [f"alice/bot@production -> MLflow v{v2.mlflow_version}"] and report.versions == []
    assert str(client().get_model_version_by_alias(name, "production").version) == v2.mlflow_version == "2"


def test_it_is_a_no_op_when_nothing_changed(mlflow_on, make_job, tmp_path):
    version = version_of(make_job(), tmp_path)
    Alias.objects.create(registered_model=version.registered_model, alias="staging", version=version)
    first = registry_sync()
    assert (len(first.versions), len(first.aliases)) == (1, 1)
    synced_at = mirrored(version).mlflow_synced_at

    again = registry_sync()
    assert (again.versions, again.aliases, again.evaluations, again.failures) == ([], [], [], [])
    assert len(runs_of(version)) == 1
    assert len(client().search_model_versions(f"name = 'u{version.owner_id}.fake-llama-ft'")) == 1
    assert mirrored(version).mlflow_synced_at == synced_at


def test_it_finds_what_mlflow_already_has_instead_of_duplicating_it(mlflow_on, make_job, tmp_path):
    # A sync that crashed after MLflow took the run and the version, before our row was saved.
    version = version_of(make_job(), tmp_path)
    assert registry_sync().ok
    run_id, mlflow_version = mirrored(version).mlflow_run_id, version.mlflow_version
    ModelVersion.objects.filter(pk=version.pk).update(mlflow_run_id="", mlflow_version="", mlflow_synced_at=None)

    assert len(registry_sync().versions) == 1
    version = mirrored(version)
    assert (version.mlflow_run_id, version.mlflow_version) == (run_id, mlflow_version)
    assert len(runs_of(version)) == 1
    assert len(client().search_model_versions(f"name = 'u{version.owner_id}.fake-llama-ft'")) == 1


def test_it_records_a_failure_keeps_going_and_a_later_sync_fixes_it(mlflow_on, make_job, tmp_path):
    broken, fine = version_of(make_job(model_name="a"), tmp_path), version_of(make_job(model_name="b"), tmp_path)
    Alias.objects.create(registered_model=broken.registered_model, alias="production", version=broken)
    hidden = Path(broken.adapter_path).with_name("hidden")
    Path(broken.adapter_path).rename(hidden)

    report = registry_sync()
    assert not report.ok and len(report.failures) == 1 and "alice/a v1" in report.failures[0]
    assert report.waiting == ["alice/a@production: v1 is not in MLflow yet"]
    broken.refresh_from_db()
    assert broken.mlflow_synced_at is None and "is missing" in broken.mlflow_error
    assert mirrored(fine).mlflow_version == "1"  # the next row went on
    assert Alias.objects.get(alias="production").mlflow_synced_at is None

    hidden.rename(broken.adapter_path)
    report = registry_sync()
    assert report.ok and len(report.versions) == 1 and len(report.aliases) == 1
    broken = mirrored(broken)
    # The failed attempt had created the run already: it is completed, not duplicated.
    assert len(runs_of(broken)) == 1
    assert str(client().get_model_version_by_alias(f"u{broken.owner_id}.a", "production").version) == "1"


def test_it_logs_an_evaluation_that_finished_after_the_version_was_mirrored(
    mlflow_on, make_job, training_file, tmp_path
):
    version = version_of(make_job(), tmp_path)
    assert registry_sync().ok
    evaluation = Evaluation.objects.create(
        owner=version.owner,
        version=version,
        base_model=version.base_model,
        dataset=training_file,
        status=RunStatus.SUCCEEDED,
        metrics={"exact_match": 0.75, "rouge_l": 0.8, "judge": {"score": 4}, "examples": 8},
        finished_at=timezone.now(),
    )
    ModelVersion.objects.filter(pk=version.pk).update(evaluation={"id": evaluation.id, "exact_match": 0.75})

    report = registry_sync()
    assert report.ok and len(report.evaluations) == 1 and report.versions == []
    run = client().get_run(mirrored(version).mlflow_run_id)
    prefix = f"eval/{training_file.id}"
    assert run.data.metrics[f"{prefix}/exact_match"] == 0.75
    assert run.data.metrics[f"{prefix}/judge/score"] == 4.0
    report_file = client().download_artifacts(run.info.run_id, f"evaluation/{evaluation.id}.json", str(tmp_path))
    assert json.loads(Path(report_file).read_text())["metrics"]["rouge_l"] == 0.8
    latest = client().download_artifacts(run.info.run_id, "evaluation/latest.json", str(tmp_path))
    assert json.loads(Path(latest).read_text()) == {"id": evaluation.id, "exact_match": 0.75}

    assert registry_sync().evaluations == []  # logged once


def test_it_keeps_two_owners_models_of_one_name_apart(mlflow_on, make_job, other_user, tmp_path):
    mine = version_of(make_job(model_name="bot"), tmp_path)
    theirs = version_of(make_job(other_user, model_name="bot"), tmp_path)
    assert registry_sync().ok
    for version in (mirrored(mine), mirrored(theirs)):
        registered = client().get_model_version(f"u{version.owner_id}.bot", "1")
        assert registered.run_id == version.mlflow_run_id
    assert mine.mlflow_run_id != theirs.mlflow_run_id


def test_it_mirrors_a_full_weights_version_as_a_model_artifact(mlflow_on, make_job, tmp_path):
    version = version_of(make_job(method="full", model_name="full-bot"), tmp_path, kind="full")
    assert registry_sync().ok
    version = mirrored(version)
    run = client().get_run(version.mlflow_run_id)
    assert [a.path for a in client().list_artifacts(run.info.run_id, "model")] == [
        "model/config.json",
        "model/model.safetensors",
    ]
    registered = client().get_model_version(f"u{version.owner_id}.full-bot", "1")
    assert registered.source == f"{run.info.artifact_uri}/model"


def test_it_fails_fast_and_clearly_when_the_server_does_not_answer(settings, make_job, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_ENABLED": True, "MLFLOW_TRACKING_URI": uri}
    version = version_of(make_job(), tmp_path)
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"1 item\(s\) could not be mirrored to MLflow at http://127\.0\.0\.1"):
        call_command("registry_sync", stdout=io.StringIO(), stderr=err)
    assert f"alice/fake-llama-ft v1: MLflow at {uri} is unreachable" in err.getvalue()
    version.refresh_from_db()
    assert version.mlflow_synced_at is None and "is unreachable" in version.mlflow_error


def test_it_prints_what_the_command_mirrored(mlflow_on, make_job, tmp_path):
    version = version_of(make_job(model_name="bot"), tmp_path)
    out = io.StringIO()
    call_command("registry_sync", stdout=out)
    text = out.getvalue()
    assert "MLflow: sqlite:///" in text
    assert (
        f"version    alice/bot v1 -> MLflow u{version.owner_id}.bot v1 (run {mirrored(version).mlflow_run_id})" in text
    )
    assert "MLflow is up to date (1 item(s) mirrored)." in text


def test_it_re_mirrors_everything_into_a_new_store_with_all(mlflow_on, make_job, settings, tmp_path):
    version = version_of(make_job(model_name="bot"), tmp_path)
    Alias.objects.create(registered_model=version.registered_model, alias="production", version=version)
    assert registry_sync().ok
    old_run = mirrored(version).mlflow_run_id

    # Pointed at another (empty) store: the rows say "synced", so only --all mirrors them again.
    new_uri = f"sqlite:///{tmp_path / 'new-mlflow.db'}"
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MLFLOW_TRACKING_URI": new_uri}
    assert registry_sync().versions == []
    out = io.StringIO()
    call_command("registry_sync", "--all", stdout=out)
    assert "alice/bot@production -> MLflow v1" in out.getvalue()
    version = mirrored(version)
    assert version.mlflow_run_id != old_run
    new = MlflowClient(tracking_uri=new_uri, registry_uri=new_uri)
    assert new.get_model_version_by_alias(f"u{version.owner_id}.bot", "production").run_id == version.mlflow_run_id


@pytest.mark.django_db(transaction=True)
def test_it_lets_two_syncs_at_once_make_one_run(mlflow_on, make_job, tmp_path):
    # Two workers taking two sync messages together: they take turns, the second finds the run.
    version = version_of(make_job(), tmp_path)
    barrier = threading.Barrier(2)
    reports = []

    def sync() -> None:
        try:
            barrier.wait(timeout=10)
            reports.append(registry_sync())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sync) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r.ok for r in reports) and sorted(len(r.versions) for r in reports) == [0, 1]
    assert len(runs_of(mirrored(version))) == 1
