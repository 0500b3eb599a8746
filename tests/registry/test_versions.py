"""A finished job's result → version N of the owner's registered model, files and lineage together."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from registry.models import ModelVersion, RegisteredModel
from registry.services.versions import AdapterError, model_version_create_from_job
from tests.helpers import require_postgres

pytestmark = pytest.mark.django_db


def adapter(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / f"adapter-{payload.hex()[:8]}"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 4}')
    (d / "adapter_model.safetensors").write_bytes(payload)
    return d


def test_it_numbers_versions_per_owner_and_name_and_copies_the_files(make_job, user, settings, tmp_path):
    j1, j2 = make_job(model_name="support-bot"), make_job(model_name="support-bot")
    v1 = model_version_create_from_job(job=j1, adapter_dir=adapter(tmp_path, b"one"))
    v2 = model_version_create_from_job(job=j2, adapter_dir=adapter(tmp_path, b"two"))
    assert [(v.registered_model.name, v.version) for v in (v1, v2)] == [("support-bot", 1), ("support-bot", 2)]
    assert v1.registered_model_id == v2.registered_model_id and v1.owner_id == user.id
    root = Path(settings.DATA_DIR) / "adapters" / str(user.id) / "support-bot"
    assert (root / "v2" / "adapter_model.safetensors").read_bytes() == b"two"
    assert sorted(p.name for p in root.iterdir()) == ["v1", "v2"]  # no staging dirs left
    assert v2.adapter_path == str(root / "v2")


def test_it_gives_two_owners_with_the_same_name_their_own_v1_and_directories(make_job, user, tmp_path):
    # Usernames that a slug would fold into one ("alice-x" / "Alice.X") must not share a line.
    other = get_user_model().objects.create_user(username="Alice.X", password="pw-x-123456")
    mine = model_version_create_from_job(job=make_job(model_name="bot"), adapter_dir=adapter(tmp_path, b"mine"))
    theirs = model_version_create_from_job(
        job=make_job(other, model_name="bot"), adapter_dir=adapter(tmp_path, b"theirs")
    )
    assert (mine.version, theirs.version) == (1, 1)
    assert mine.registered_model_id != theirs.registered_model_id
    assert mine.adapter_path != theirs.adapter_path
    assert (Path(mine.adapter_path) / "adapter_model.safetensors").read_bytes() == b"mine"
    assert (Path(theirs.adapter_path) / "adapter_model.safetensors").read_bytes() == b"theirs"
    assert RegisteredModel.objects.filter(name="bot").count() == 2


def test_it_names_the_model_after_the_suffix_else_the_base(make_job, tmp_path):
    named = model_version_create_from_job(job=make_job(suffix="helpdesk"), adapter_dir=adapter(tmp_path, b"a"))
    plain = model_version_create_from_job(job=make_job(), adapter_dir=adapter(tmp_path, b"b"))
    assert named.registered_model.name == "helpdesk"
    assert plain.registered_model.name == "fake-llama-ft"


def test_it_is_idempotent_per_job(make_job, tmp_path):
    job = make_job()
    first = model_version_create_from_job(job=job, adapter_dir=adapter(tmp_path, b"a"))
    again = model_version_create_from_job(job=job, adapter_dir=adapter(tmp_path, b"b"))
    assert again.id == first.id


def test_it_rejects_an_incomplete_adapter(make_job, tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors"):
        model_version_create_from_job(job=make_job(), adapter_dir=d)
    assert not ModelVersion.objects.exists()


def test_it_refuses_pickle_weights_next_to_the_adapter(make_job, tmp_path):
    d = adapter(tmp_path, b"ok")
    (d / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(AdapterError, match="pickle"):
        model_version_create_from_job(job=make_job(), adapter_dir=d)
    assert not ModelVersion.objects.exists()


def test_it_registers_a_full_fine_tune_as_a_full_weights_version(make_job, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"weights")
    version = model_version_create_from_job(job=make_job(method="full", model_name="full-bot"), adapter_dir=d)
    assert version.kind == ModelVersion.Kind.FULL
    assert version.lineage["lora"] is None and version.lineage["method"] == "full"
    assert (Path(version.adapter_path) / "model.safetensors").read_bytes() == b"weights"


def test_it_records_the_lineage_of_the_version(make_job, fake_base_model, training_file, tmp_path):
    metrics_file = tmp_path / "metrics.jsonl"
    metrics_file.write_text(
        '{"type":"metrics","step":1,"loss":2.5,"eval_loss":2.9}\n'
        "not json\n"
        '{"type":"metrics","step":2,"loss":1.25,"eval_loss":null}\n'
        '{"type":"metrics","step":3,"loss":1.5,"eval_loss":2.1}\n'
    )
    job = make_job(lora_rank=4, lora_alpha=8.0, target_modules=["q_proj", "v_proj"])
    version = model_version_create_from_job(
        job=job,
        adapter_dir=adapter(tmp_path, b"weights"),
        metrics={"final_loss": 1.5, "trained_tokens": 99},
        config={"learning_rate": 0.001},
        metrics_file=metrics_file,
        device="cpu",
    )
    lineage = version.lineage
    assert version.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert len(version.sha256) == 64 and version.size_bytes == len(b"weights") + len(b'{"r": 4}')
    assert lineage["base_model"] == {
        "name": "fake-llama",
        "content_hash": fake_base_model.content_hash,
        "path": fake_base_model.path,
    }
    assert lineage["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert lineage["files"]["training_file"] == {
        "id": training_file.id,
        "sha256": training_file.sha256,
        "examples": training_file.example_count,
    }
    assert lineage["files"]["validation_file"] is None
    assert lineage["config"] == {"learning_rate": 0.001}
    assert lineage["environment"]["device"] == "cpu"
    assert lineage["environment"]["packages"]["torch"].startswith("2.13.0")
    assert lineage["job"]["id"] == job.id
    assert version.metrics["best_train_loss"] == 1.25 and version.metrics["best_eval_loss"] == 2.1
    assert version.metrics["final_loss"] == 1.5 and version.metrics["trained_tokens"] == 99


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_gives_two_jobs_finishing_together_v1_and_v2_with_their_files(make_job, tmp_path):
    require_postgres()
    jobs = [make_job(model_name="race"), make_job(model_name="race")]
    barrier = threading.Barrier(2)
    results: list[ModelVersion] = []
    errors: list[BaseException] = []

    def finish(job, payload: bytes) -> None:
        try:
            src = adapter(tmp_path, payload)
            barrier.wait(timeout=10)
            results.append(model_version_create_from_job(job=job, adapter_dir=src))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=finish, args=(job, p)) for job, p in zip(jobs, (b"first", b"second"), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(v.version for v in results) == [1, 2]
    for version in results:
        payload = (Path(version.adapter_path) / "adapter_model.safetensors").read_bytes()
        expected = b"first" if version.job_id == jobs[0].id else b"second"
        assert payload == expected
    assert ModelVersion.objects.filter(registered_model__name="race").count() == 2


def test_it_fills_a_missing_base_hash_before_recording_what_the_version_was_trained_on(
    make_job, fake_base_model, tmp_path
):
    # A base registered before content hashes existed: its first version computes and stores it.
    expected = fake_base_model.content_hash
    fake_base_model.content_hash = ""
    fake_base_model.save(update_fields=["content_hash"])
    version = model_version_create_from_job(job=make_job(), adapter_dir=adapter(tmp_path, b"w"))
    fake_base_model.refresh_from_db()
    assert len(expected) == 64
    assert fake_base_model.content_hash == expected
    assert version.lineage["base_model"]["content_hash"] == expected
