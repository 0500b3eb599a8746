"""/v1/files over real HTTP (DRF APIClient with real API keys): uploads, errors, limits, scoping."""

from __future__ import annotations

import hashlib
import importlib
import io
import json

import httpx
import openai
import pytest
from django.apps import apps
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

import tunings.services.jobs as jobs_service
from registry.models import BaseModel
from tests.tunings.datasets.conftest import (
    BAD_SAMPLES,
    GOOD_SAMPLES,
    sample,
    stored_files,
    upload_multipart,
    upload_raw,
)
from tuninglab.errors import PayloadTooLargeError
from tunings.models import TrainingFile, TuningJob
from tunings.services.files import upload_stage_stream


@pytest.mark.parametrize(("name", "fmt"), GOOD_SAMPLES)
def test_it_accepts_every_format_over_multipart(api_client, settings, name, fmt):
    response = upload_multipart(api_client, name)
    assert response.status_code == 200, response.content
    body = response.json()
    content = sample(name)
    sha = hashlib.sha256(content).hexdigest()
    assert body["object"] == "file"
    assert body["id"].startswith("file-")
    assert body["filename"] == name
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert body["status_details"] is None
    assert body["bytes"] == len(content)
    assert isinstance(body["created_at"], int)
    assert body["format"] == fmt
    assert body["example_count"] == 12
    assert body["token_estimate"] > 0
    assert body["sha256"] == sha
    assert body["validation"] == {"errors": [], "error_count": 0}
    assert body["stats"]["example_count"] == 12
    assert body["stats"]["role_counts"]["assistant"] >= 12
    # Stored content-addressed, byte for byte, and no temp file left behind.
    blob = settings.DATA_DIR / "files" / sha[:2] / f"{sha}.jsonl"
    assert blob.read_bytes() == content
    assert list((settings.DATA_DIR / "tmp").iterdir()) == []
    row = TrainingFile.objects.get(id=body["id"])
    assert row.storage_path == f"files/{sha[:2]}/{sha}.jsonl"


@pytest.mark.parametrize(("name", "code", "line"), BAD_SAMPLES)
def test_it_rejects_each_bad_file_with_its_code_and_line_and_stores_nothing(
    api_client, settings, small_limits, name, code, line
):
    response = upload_multipart(api_client, name)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == (f"line {line}" if line else "file")
    if line:
        assert f"Line {line}" in error["message"]
    assert error["error_count"] == 1
    assert [(d["line"], d["code"]) for d in error["details"]] == [(line, code)]
    assert TrainingFile.objects.count() == 0
    assert stored_files(settings.DATA_DIR) == []


def test_it_lists_every_problem_in_details(api_client, settings):
    lines = sample("good_openai_chat.jsonl").splitlines()
    lines[1] = b"oops"
    lines[9] = b'{"messages": [{"role": "narrator", "content": "x"}]}'
    response = upload_raw(api_client, b"\n".join(lines), query="?filename=two.jsonl")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["param"] == "line 2"
    assert "1 more problem" in error["message"]
    assert error["error_count"] == 2
    assert [(d["line"], d["code"], d["param"]) for d in error["details"]] == [
        (2, "invalid_json", None),
        (10, "unknown_role", "messages[0].role"),
    ]
    assert stored_files(settings.DATA_DIR) == []


def test_it_accepts_a_raw_body_with_the_name_from_the_query(api_client):
    content = sample("good_alpaca.jsonl")
    response = upload_raw(api_client, content, query="?filename=raw.jsonl&purpose=fine-tune")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["filename"], body["format"], body["bytes"]) == ("raw.jsonl", "alpaca", len(content))


def test_it_takes_the_raw_filename_from_content_disposition(api_client):
    response = upload_raw(
        api_client,
        sample("good_sharegpt.jsonl"),
        content_type="application/octet-stream",
        HTTP_CONTENT_DISPOSITION='attachment; filename="../../etc/chat.jsonl"',
    )
    assert response.status_code == 200, response.content
    assert response.json()["filename"] == "chat.jsonl"  # path parts stripped


def test_it_rejects_an_unknown_purpose_and_stores_nothing(api_client, settings):
    response = upload_multipart(api_client, "good_openai_chat.jsonl", purpose="assistants")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_purpose"
    assert response.json()["error"]["param"] == "purpose"
    assert stored_files(settings.DATA_DIR) == []


def test_it_answers_400_without_a_file(api_client):
    response = api_client.post("/v1/files", {"purpose": "fine-tune"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_file"


def test_it_answers_415_for_an_unsupported_content_type(api_client):
    response = api_client.post("/v1/files", {"a": 1}, format="json")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


# --- size cap ---------------------------------------------------------------------------------


def _big_jsonl(size: int) -> bytes:
    line = json.dumps({"prompt": "p" * 200, "completion": "c"}).encode() + b"\n"
    return line * (size // len(line) + 1)


def _assert_nothing_stored(settings):
    assert TrainingFile.objects.count() == 0
    assert stored_files(settings.DATA_DIR) == []
    tmp = settings.DATA_DIR / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_it_refuses_a_too_large_multipart_upload_with_413(api_client, settings, small_limits):
    response = upload_multipart(api_client, "big.jsonl", _big_jsonl(200 * 1024))
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large"
    assert error["param"] == "file"
    assert "0.0195312 MB" in error["message"]  # 20 KiB, the limit in MB
    _assert_nothing_stored(settings)


def test_it_counts_multipart_bytes_when_content_length_is_within_the_slack(api_client, settings, small_limits):
    # 30 KiB: past the 20 KiB cap but within the multipart overhead allowance of the
    # Content-Length check, so the byte count while streaming is what refuses it.
    response = upload_multipart(api_client, "big.jsonl", _big_jsonl(30 * 1024))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    _assert_nothing_stored(settings)


def test_it_refuses_a_too_large_raw_upload_with_413(api_client, settings, small_limits):
    response = upload_raw(api_client, _big_jsonl(200 * 1024), query="?filename=big.jsonl")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    _assert_nothing_stored(settings)


def test_it_counts_raw_bytes_when_content_length_is_absent(db, settings, small_limits):
    with pytest.raises(PayloadTooLargeError):
        upload_stage_stream(stream=io.BytesIO(_big_jsonl(100 * 1024)), max_bytes=20 * 1024, content_length=None)
    _assert_nothing_stored(settings)


def test_it_accepts_a_file_just_under_the_limit(api_client, settings):
    content = sample("good_openai_chat.jsonl")
    settings.TUNINGLAB = {**settings.TUNINGLAB, "MAX_UPLOAD_BYTES": len(content)}
    assert upload_multipart(api_client, "exact.jsonl", content).status_code == 200
    assert upload_raw(api_client, content + b"\n").status_code == 413


# --- dedup, list, get, content, delete -------------------------------------------------------------


def test_it_stores_identical_content_once(api_client, other_api_client, settings):
    first = upload_multipart(api_client, "good_openai_chat.jsonl").json()
    second = upload_raw(api_client, sample("good_openai_chat.jsonl"), query="?filename=copy.jsonl").json()
    third = upload_multipart(other_api_client, "good_openai_chat.jsonl").json()
    assert len({first["id"], second["id"], third["id"]}) == 3
    assert first["sha256"] == second["sha256"] == third["sha256"]
    blobs = [p for p in stored_files(settings.DATA_DIR) if p.suffix == ".jsonl"]
    assert len(blobs) == 1
    assert list((settings.DATA_DIR / "tmp").iterdir()) == []


def test_it_pages_the_list_with_a_cursor(api_client, other_api_client):
    ids = [
        upload_raw(api_client, sample("good_alpaca.jsonl"), query=f"?filename={i}.jsonl").json()["id"] for i in range(5)
    ]
    upload_multipart(other_api_client, "good_alpaca.jsonl")  # not ours: never listed
    page1 = api_client.get("/v1/files?limit=2").json()
    assert page1["object"] == "list"
    assert page1["has_more"] is True
    assert [f["id"] for f in page1["data"]] == ids[::-1][:2]  # newest first
    assert (page1["first_id"], page1["last_id"]) == (ids[4], ids[3])
    page2 = api_client.get(f"/v1/files?limit=2&after={page1['last_id']}").json()
    page3 = api_client.get(f"/v1/files?limit=2&after={page2['last_id']}").json()
    assert [f["id"] for f in page2["data"] + page3["data"]] == ids[::-1][2:]
    assert page3["has_more"] is False
    assert api_client.get("/v1/files?limit=0").status_code == 400


def _list_queries(client, limit: int) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/v1/files?limit={limit}")
    assert response.status_code == 200, response.content
    return len(queries), response.json()


def test_it_lists_a_page_of_files_in_a_fixed_number_of_queries(api_client, user):
    uploaded = upload_raw(api_client, sample("good_openai_chat.jsonl"), query="?filename=0.jsonl").json()
    # The rest as rows cloned from the real one (same content, own id and stats copy), as 109
    # more uploads would make them, without validating the same file 109 times.
    template = TrainingFile.objects.get(id=uploaded["id"])
    TrainingFile.objects.bulk_create(
        TrainingFile(
            owner=user,
            filename=f"{i}.jsonl",
            purpose=template.purpose,
            sha256=template.sha256,
            bytes=template.bytes,
            storage_path=template.storage_path,
            format=template.format,
            example_count=template.example_count,
            token_estimate=template.token_estimate,
            status=template.status,
            validation_errors=[],
            stats=template.stats,
        )
        for i in range(1, 110)
    )
    # Warm up: the first authenticated request of a key may also stamp its last_used_at.
    api_client.get("/v1/files?limit=1")
    small_count, small = _list_queries(api_client, 10)
    large_count, large = _list_queries(api_client, 100)
    assert (len(small["data"]), len(large["data"])) == (10, 100)
    # API key lookup + the page itself: no query (and no disk read) per listed file.
    assert small_count == large_count <= 2
    assert all(f["stats"] == uploaded["stats"] for f in large["data"])
    assert all(f["stats"]["example_count"] == 12 for f in small["data"])


def test_it_stores_the_stats_on_the_row_and_needs_no_file_beside_the_bytes(api_client, settings):
    body = upload_multipart(api_client, "good_sharegpt.jsonl").json()
    row = TrainingFile.objects.get(id=body["id"])
    assert row.stats == body["stats"]
    assert (row.stats["format"], row.stats["example_count"]) == ("sharegpt", 12)
    # Only the content is stored on disk; the stats are served from the row alone.
    assert [p.name for p in stored_files(settings.DATA_DIR)] == [f"{body['sha256']}.jsonl"]
    (settings.DATA_DIR / row.storage_path).unlink()
    assert api_client.get(f"/v1/files/{body['id']}").json()["stats"] == body["stats"]
    assert api_client.get("/v1/files").json()["data"][0]["stats"] == body["stats"]


def test_it_gives_every_row_of_shared_content_its_own_stats(api_client, other_api_client):
    first = upload_multipart(api_client, "good_alpaca.jsonl").json()
    second = upload_multipart(other_api_client, "good_alpaca.jsonl").json()
    assert first["sha256"] == second["sha256"]
    rows = TrainingFile.objects.filter(id__in=[first["id"], second["id"]])
    assert [r.stats for r in rows] == [first["stats"], first["stats"]]
    assert first["stats"]["format"] == "alpaca"


# The migration module's name starts with a digit: import it by string.
_stats_migration = importlib.import_module("tunings.migrations.0003_trainingfile_stats")


def _sidecar(data_dir, sha256: str):
    path = data_dir / "files" / sha256[:2] / f"{sha256}.stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_it_backfills_stats_from_the_old_sidecar_files(user, settings):
    def row(sha256: str, **extra):
        return TrainingFile.objects.create(
            owner=user, filename="f.jsonl", sha256=sha256, bytes=1, storage_path="x", status="processed", **extra
        )

    shared, lost, broken = "a" * 64, "b" * 64, "c" * 64
    twins = [row(shared), row(shared, deleted_at=timezone.now())]
    no_sidecar, unreadable = row(lost), row(broken)
    kept = row(shared, stats={"format": "alpaca", "example_count": 1})
    _sidecar(settings.DATA_DIR, shared).write_text(json.dumps({"format": "openai_chat", "example_count": 12}))
    _sidecar(settings.DATA_DIR, broken).write_text("{not json")

    _stats_migration.backfill_stats_from_sidecars(apps, None)

    for twin in twins:
        twin.refresh_from_db()
        assert twin.stats == {"format": "openai_chat", "example_count": 12}
    for untouched in (no_sidecar, unreadable):
        untouched.refresh_from_db()
        assert untouched.stats is None
    kept.refresh_from_db()
    assert kept.stats == {"format": "alpaca", "example_count": 1}  # stats already on the row win


def test_it_retrieves_and_downloads_a_file(api_client):
    content = sample("good_chatglm3.jsonl")
    file_id = upload_multipart(api_client, "good_chatglm3.jsonl").json()["id"]
    body = api_client.get(f"/v1/files/{file_id}").json()
    assert (body["id"], body["format"]) == (file_id, "chatglm3")
    response = api_client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content
    assert 'filename="good_chatglm3.jsonl"' in response["Content-Disposition"]


def test_it_hides_other_users_files_on_every_route(api_client, other_api_client):
    file_id = upload_multipart(api_client, "good_openai_chat.jsonl").json()["id"]
    for response in (
        other_api_client.get(f"/v1/files/{file_id}"),
        other_api_client.get(f"/v1/files/{file_id}/content"),
        other_api_client.delete(f"/v1/files/{file_id}"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert other_api_client.get("/v1/files").json()["data"] == []
    assert TrainingFile.objects.filter(id=file_id).exists()


def test_it_requires_an_api_key():
    assert APIClient().get("/v1/files").status_code == 401


def test_it_deletes_a_file_and_its_bytes_when_unshared(api_client, settings, django_capture_on_commit_callbacks):
    first = upload_multipart(api_client, "good_openai_chat.jsonl").json()
    second = upload_raw(api_client, sample("good_openai_chat.jsonl")).json()
    blob = settings.DATA_DIR / "files" / first["sha256"][:2] / f"{first['sha256']}.jsonl"
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(f"/v1/files/{first['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": first["id"], "object": "file", "deleted": True}
    assert blob.exists()  # still used by the second row
    assert api_client.get(f"/v1/files/{first['id']}").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/v1/files/{second['id']}").status_code == 200
    assert not blob.exists()
    assert stored_files(settings.DATA_DIR) == []
    assert api_client.delete(f"/v1/files/{second['id']}").status_code == 404


def _job(owner, file, status):
    base, _ = BaseModel.objects.get_or_create(name="tiny-llama", defaults={"path": "/m", "architecture": "Llama"})
    return TuningJob.objects.create(owner=owner, base_model=base, training_file=file, status=status)


def test_it_refuses_to_delete_a_file_a_running_job_uses(api_client, user, settings):
    body = upload_multipart(api_client, "good_openai_chat.jsonl").json()
    job = _job(user, TrainingFile.objects.get(id=body["id"]), "running")
    response = api_client.delete(f"/v1/files/{body['id']}")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "file_in_use"
    assert job.id in error["message"]
    assert TrainingFile.objects.filter(id=body["id"]).exists()
    assert len([p for p in stored_files(settings.DATA_DIR) if p.suffix == ".jsonl"]) == 1


def test_it_soft_deletes_a_file_a_finished_job_used_and_removes_unshared_bytes(
    api_client, user, settings, django_capture_on_commit_callbacks
):
    body = upload_multipart(api_client, "good_openai_chat.jsonl").json()
    job = _job(user, TrainingFile.objects.get(id=body["id"]), "succeeded")
    blob = settings.DATA_DIR / "files" / body["sha256"][:2] / f"{body['sha256']}.jsonl"
    assert blob.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.delete(f"/v1/files/{body['id']}")
    assert response.status_code == 200, response.content
    assert response.json() == {"id": body["id"], "object": "file", "deleted": True}
    # The file is gone for its owner on every route...
    for gone in (api_client.get(f"/v1/files/{body['id']}"), api_client.get(f"/v1/files/{body['id']}/content")):
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "not_found"
    assert api_client.get("/v1/files").json()["data"] == []
    assert api_client.delete(f"/v1/files/{body['id']}").status_code == 404
    # ...its bytes are gone (no live row shares them)...
    assert stored_files(settings.DATA_DIR) == []
    # ...but the row stays for the finished job, which still reads with the file id.
    row = TrainingFile.objects.get(id=body["id"])
    assert row.deleted_at is not None
    job_body = api_client.get(f"/v1/fine_tuning/jobs/{job.id}")
    assert job_body.status_code == 200, job_body.content
    assert job_body.json()["training_file"] == body["id"]
    assert job_body.json()["status"] == "succeeded"


def test_it_keeps_the_bytes_another_live_file_shares_when_soft_deleting(
    api_client, user, settings, django_capture_on_commit_callbacks
):
    used = upload_multipart(api_client, "good_openai_chat.jsonl").json()
    twin = upload_raw(api_client, sample("good_openai_chat.jsonl")).json()
    assert twin["sha256"] == used["sha256"]
    _job(user, TrainingFile.objects.get(id=used["id"]), "failed")
    blob = settings.DATA_DIR / "files" / used["sha256"][:2] / f"{used['sha256']}.jsonl"
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/v1/files/{used['id']}").status_code == 200
    assert blob.read_bytes() == sample("good_openai_chat.jsonl")
    # The twin's stats are on its own row: deleting the row it shared the bytes with keeps them.
    twin_stats = api_client.get(f"/v1/files/{twin['id']}").json()["stats"]
    assert twin_stats is not None
    assert twin_stats == used["stats"]
    content = api_client.get(f"/v1/files/{twin['id']}/content")
    assert b"".join(content.streaming_content) == sample("good_openai_chat.jsonl")
    assert [f["id"] for f in api_client.get("/v1/files").json()["data"]] == [twin["id"]]
    # The soft-deleted row does not keep the bytes: deleting the last live row collects them.
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.delete(f"/v1/files/{twin['id']}").status_code == 200
    assert stored_files(settings.DATA_DIR) == []


@pytest.mark.parametrize("status", ["validating_files", "queued", "running"])
def test_it_refuses_to_delete_a_file_a_pending_job_uses_as_validation_file(api_client, user, status):
    train = TrainingFile.objects.get(id=upload_multipart(api_client, "good_openai_chat.jsonl").json()["id"])
    valid_id = upload_multipart(api_client, "good_alpaca.jsonl").json()["id"]
    job = _job(user, train, status)
    job.validation_file_id = valid_id
    job.save(update_fields=["validation_file"])
    response = api_client.delete(f"/v1/files/{valid_id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "file_in_use"
    assert TrainingFile.objects.get(id=valid_id).deleted_at is None


def test_it_refuses_a_new_job_on_a_deleted_file(api_client, user):
    BaseModel.objects.create(name="tiny-llama", path="/m", architecture="Llama")
    file_id = upload_multipart(api_client, "good_openai_chat.jsonl").json()["id"]
    assert api_client.delete(f"/v1/files/{file_id}").status_code == 200
    response = api_client.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id}, format="json")
    assert response.status_code == 404, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("not_found", "training_file")


def test_it_refuses_the_job_when_the_file_is_deleted_while_the_job_is_being_created(api_client, user, monkeypatch):
    """Delete wins the race after create's first check: the re-check under the row lock answers 404."""
    BaseModel.objects.create(name="tiny-llama", path="/m", architecture="Llama")
    file_id = upload_multipart(api_client, "good_openai_chat.jsonl").json()["id"]
    real_resolve = jobs_service.resolve_hyperparameters

    def resolve_then_delete(**kwargs):
        TrainingFile.objects.filter(id=file_id).update(deleted_at=timezone.now())
        return real_resolve(**kwargs)

    monkeypatch.setattr(jobs_service, "resolve_hyperparameters", resolve_then_delete)
    response = api_client.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id}, format="json")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["param"] == "training_file"
    assert TuningJob.objects.count() == 0


def test_it_replays_an_upload_with_the_same_idempotency_key(api_client, settings):
    first = upload_multipart(api_client, "good_alpaca.jsonl", HTTP_IDEMPOTENCY_KEY="up-1")
    again = upload_multipart(api_client, "good_alpaca.jsonl", HTTP_IDEMPOTENCY_KEY="up-1")
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert TrainingFile.objects.count() == 1
    other = upload_multipart(api_client, "good_sharegpt.jsonl", HTTP_IDEMPOTENCY_KEY="up-1")
    assert other.status_code == 422
    assert list((settings.DATA_DIR / "tmp").iterdir()) == []


def test_it_fingerprints_raw_uploads_by_content(api_client):
    first = upload_raw(api_client, sample("good_alpaca.jsonl"), HTTP_IDEMPOTENCY_KEY="raw-1")
    assert first.status_code == 200
    other = upload_raw(api_client, sample("good_sharegpt.jsonl"), HTTP_IDEMPOTENCY_KEY="raw-1")
    assert other.status_code == 422


def test_it_works_with_the_official_openai_package(api_client):
    """The openai client (multipart upload, list, retrieve, content, delete) against our WSGI app."""
    # As Django's test client does: the real WSGI handler would close the test's DB
    # connection (and its transaction) at the end of each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        _openai_roundtrip(api_client)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _openai_roundtrip(api_client):
    transport = httpx.WSGITransport(app=get_wsgi_application())
    client = openai.OpenAI(
        base_url="http://testserver/v1",
        api_key=api_client.raw_api_key,
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )
    content = sample("good_openai_chat.jsonl")
    created = client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.bytes == len(content)
    assert created.status == "processed"
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.retrieve(created.id).filename == "train.jsonl"
    assert client.files.content(created.id).content == content
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("bad.jsonl", sample("bad_unknown_role.jsonl")), purpose="fine-tune")
    assert info.value.code == "unknown_role"
    assert client.files.delete(created.id).deleted is True
