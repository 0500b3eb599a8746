"""Admin console: every page renders for a superuser; actions change state through services."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from registry.models import Alias, AliasEvent, BaseModel, ModelVersion, RegisteredModel
from tests.helpers import FAKE_PARAMETER_COUNT, write_fake_model
from tuninglab.models import ApiKey, IdempotencyRecord
from tuninglab.selectors import hash_key
from tuninglab.services import api_key_create
from tunings.models import Checkpoint, JobEvent, TrainingFile, TuningJob
from tunings.services.jobs import job_metrics_events_add
from tunings.services.state import job_event_add

pytestmark = pytest.mark.django_db
S = TuningJob.Status


@pytest.fixture
def everything(make_job, user, training_file, fake_base_model):
    """One row of every model the admin shows."""
    job = make_job(S.SUCCEEDED, fine_tuned_model="ft:fake-llama:demo:1")
    job_event_add(job_id=job.id, message="hello")
    Checkpoint.objects.create(job=job, step=10, path="/tmp/ckpt", metrics={"loss": 1.5})
    bad_file = TrainingFile.objects.create(
        owner=user,
        filename="bad.jsonl",
        sha256="1" * 64,
        bytes=10,
        storage_path="files/bad.jsonl",
        status=TrainingFile.Status.ERROR,
        validation_errors=[{"line": 3, "code": "invalid_json", "param": None, "message": "Line 3 is not <JSON>"}],
    )
    line = RegisteredModel.objects.create(owner=user, name="demo")
    version = ModelVersion.objects.create(
        registered_model=line, owner=user, version=1, base_model=fake_base_model, job=job, adapter_path="/tmp/a"
    )
    alias = Alias.objects.create(registered_model=line, alias="production", version=version)
    AliasEvent.objects.create(alias=alias, to_version=version, actor=user, reason="first")
    key, _ = api_key_create(owner=user, name="k")
    record = IdempotencyRecord.objects.create(owner=user, key="idem-1", method="POST", path="/v1/x", request_hash="h")
    return {
        TuningJob: job,
        TrainingFile: bad_file,
        JobEvent: None,
        BaseModel: fake_base_model,
        ModelVersion: version,
        Alias: alias,
        AliasEvent: alias.events.first(),
        ApiKey: key,
        IdempotencyRecord: record,
    }


def _url(model, name, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{name}", args=args)


def test_it_renders_every_changelist_and_change_page(admin_client, everything):
    for model, obj in everything.items():
        if obj is None:
            continue
        changelist = admin_client.get(_url(model, "changelist"))
        assert changelist.status_code == 200, model.__name__
        change = admin_client.get(_url(model, "change", obj.pk))
        assert change.status_code == 200, model.__name__


def _queries(admin_client, url):
    with CaptureQueriesContext(connection) as ctx:
        assert admin_client.get(url).status_code == 200, url
    return len(ctx.captured_queries)


def _more_of_everything(make_job, fake_base_model, owners):
    """One more row of every model the admin lists, per owner (each row's FKs point elsewhere)."""
    for i, owner in enumerate(owners, start=2):
        job = make_job(S.SUCCEEDED, owner=owner)
        TrainingFile.objects.create(
            owner=owner, filename=f"f{i}.jsonl", sha256=f"{i}" * 64, bytes=1, storage_path=f"files/{i}.jsonl"
        )
        BaseModel.objects.create(name=f"base-{i}", path=f"/models/{i}")
        line = RegisteredModel.objects.create(owner=owner, name=f"line-{i}")
        version = ModelVersion.objects.create(
            registered_model=line, owner=owner, version=1, base_model=fake_base_model, job=job, adapter_path="/tmp/a"
        )
        alias = Alias.objects.create(registered_model=line, alias="production", version=version)
        AliasEvent.objects.create(alias=alias, to_version=version, actor=owner)
        api_key_create(owner=owner)
        IdempotencyRecord.objects.create(owner=owner, key=f"idem-{i}", method="POST", path="/v1/x", request_hash="h")


def test_it_lists_every_changelist_in_a_fixed_number_of_queries(
    admin_client, everything, make_job, fake_base_model, django_user_model
):
    urls = [_url(model, "changelist") for model, obj in everything.items() if obj is not None]
    for url in urls:
        _queries(admin_client, url)  # warm per-process caches (content types, permissions)
    one_row = {url: _queries(admin_client, url) for url in urls}
    owners = [django_user_model.objects.create_user(username=f"owner-{i}") for i in range(3)]
    _more_of_everything(make_job, fake_base_model, owners)

    assert {url: _queries(admin_client, url) for url in urls} == one_row


def test_it_renders_the_alias_history_in_a_fixed_number_of_queries(admin_client, everything, django_user_model):
    alias, version = everything[Alias], everything[ModelVersion]
    url = _url(Alias, "change", alias.pk)
    _queries(admin_client, url)
    one_event = _queries(admin_client, url)
    for i in range(3):
        actor = django_user_model.objects.create_user(username=f"actor-{i}")
        AliasEvent.objects.create(alias=alias, from_version=version, to_version=version, actor=actor)

    assert _queries(admin_client, url) == one_event


def test_it_renders_the_job_page_with_events_checkpoints_and_error(admin_client, make_job):
    job = make_job(S.FAILED, error={"code": "out_of_memory", "message": "OOM at step 3", "param": None})
    for i in range(60):
        job_event_add(job_id=job.id, message=f"event {i:02d}")
    Checkpoint.objects.create(job=job, step=20, path="/tmp/ckpt-20", metrics={})
    html = admin_client.get(_url(TuningJob, "change", job.pk)).content.decode()
    assert "out_of_memory" in html and "OOM at step 3" in html
    assert "/tmp/ckpt-20" in html
    # Only the newest 50 events, oldest first.
    shown = list(dict.fromkeys(re.findall(r"event (\d\d)", html)))  # each row names it twice
    assert shown == [f"{i:02d}" for i in range(10, 60)]


def test_it_filters_and_searches_the_job_list(admin_client, make_job, other_user):
    queued = make_job(S.QUEUED, suffix="needle")
    failed = make_job(S.FAILED)
    theirs = make_job(S.QUEUED, owner=other_user)
    url = _url(TuningJob, "changelist")
    html = admin_client.get(url, {"status__exact": "failed"}).content.decode()
    assert failed.id in html and queued.id not in html
    html = admin_client.get(url, {"q": "needle"}).content.decode()
    assert queued.id in html and failed.id not in html
    html = admin_client.get(url, {"q": "mallory"}).content.decode()
    assert theirs.id in html and queued.id not in html
    html = admin_client.get(url, {"owner__id__exact": other_user.pk}).content.decode()
    assert theirs.id in html and failed.id not in html


def test_it_renders_the_validation_report_as_a_table(admin_client, everything):
    html = admin_client.get(_url(TrainingFile, "change", everything[TrainingFile].pk)).content.decode()
    assert "<th>line</th>" in html
    assert "<td>3</td><td><code>invalid_json</code></td>" in html
    assert "Line 3 is not &lt;JSON&gt;" in html  # escaped, not injected


def _action(admin_client, model, action, objs, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objs], **extra}
    return admin_client.post(_url(model, "changelist"), data, follow=True)


def test_it_cancels_jobs_and_reports_the_terminal_ones(admin_client, make_job):
    queued, running, done = make_job(S.QUEUED), make_job(S.RUNNING), make_job(S.SUCCEEDED)
    response = _action(admin_client, TuningJob, "cancel_jobs", [queued, running, done])
    messages = [str(m) for m in response.context["messages"]]
    assert any("Cancelled 1 job(s)" in m for m in messages)
    assert any("Cancellation requested for 1 running job(s)" in m and running.id in m for m in messages)
    assert any("1 job(s) were already finished" in m and done.id in m for m in messages)
    queued.refresh_from_db()
    running.refresh_from_db()
    done.refresh_from_db()
    assert queued.status == S.CANCELLED
    assert running.status == S.RUNNING and running.cancel_requested
    assert done.status == S.SUCCEEDED and not done.cancel_requested
    assert JobEvent.objects.filter(job=queued, message__contains="cancelled by admin").exists()


def test_it_retries_failed_jobs_as_new_queued_jobs(admin_client, make_job):
    failed, running = make_job(S.FAILED, attempt=2, error={"code": "x", "message": "y"}), make_job(S.RUNNING)
    before = set(TuningJob.objects.values_list("id", flat=True))
    response = _action(admin_client, TuningJob, "retry_jobs", [failed, running])
    messages = [str(m) for m in response.context["messages"]]
    assert any("Retried 1 job(s)" in m for m in messages)
    assert any("Skipped 1 job(s)" in m and running.id in m for m in messages)
    (new_id,) = set(TuningJob.objects.values_list("id", flat=True)) - before
    new = TuningJob.objects.get(id=new_id)
    assert new.status == S.QUEUED and new.attempt == 0 and new.error is None
    assert new.training_file_id == failed.training_file_id and new.hyperparameters == failed.hyperparameters
    failed.refresh_from_db()
    assert failed.status == S.FAILED  # the original keeps its history


def test_it_changes_priority_through_an_intermediate_form(admin_client, make_job):
    queued, done = make_job(S.QUEUED, priority=0), make_job(S.SUCCEEDED, priority=0)
    form = _action(admin_client, TuningJob, "change_priority", [queued, done])
    assert form.status_code == 200
    assert b"Change job priority" in form.content and queued.id.encode() in form.content
    response = _action(admin_client, TuningJob, "change_priority", [queued, done], apply="1", priority="9")
    messages = [str(m) for m in response.context["messages"]]
    assert any("Set priority 9 on 1 job(s)" in m for m in messages)
    assert any("finished job(s) left unchanged" in m and done.id in m for m in messages)
    queued.refresh_from_db()
    done.refresh_from_db()
    assert (queued.priority, done.priority) == (9, 0)
    assert JobEvent.objects.filter(job=queued, data__priority=9).exists()


def test_it_rejects_an_invalid_priority_without_changing_anything(admin_client, make_job):
    job = make_job(S.QUEUED, priority=1)
    response = _action(admin_client, TuningJob, "change_priority", [job], apply="1", priority="lots")
    assert response.status_code == 200 and b"Enter a whole number" in response.content
    job.refresh_from_db()
    assert job.priority == 1


def test_it_hides_job_actions_from_staff_without_the_change_permission(client, make_job, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(username="viewer", password="pw-viewer-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_tuningjob"))
    client.force_login(viewer)
    job = make_job(S.QUEUED)
    page = client.get(_url(TuningJob, "changelist"))
    assert page.status_code == 200 and b"cancel_jobs" not in page.content
    client.post(_url(TuningJob, "changelist"), {"action": "cancel_jobs", ACTION_CHECKBOX_NAME: [job.pk]})
    job.refresh_from_db()
    assert job.status == S.QUEUED


def test_it_creates_an_api_key_showing_the_secret_once_and_storing_only_the_hash(admin_client, user):
    response = admin_client.post(_url(ApiKey, "add"), {"owner": user.pk, "name": "from-admin"})
    assert response.status_code == 200
    raw = re.search(r'value="(tl-[^"]+)"', response.content.decode()).group(1)
    key = ApiKey.objects.get(name="from-admin")
    assert key.owner == user and key.key_hash == hash_key(raw)
    # Not in a flash message (cookie / session), not on the key's page afterwards.
    assert raw not in str(admin_client.cookies)
    assert raw not in admin_client.get(_url(ApiKey, "change", key.pk)).content.decode()
    from django.contrib.sessions.models import Session

    assert all(raw not in str(s.get_decoded()) for s in Session.objects.all())


def test_it_revokes_keys_from_the_admin(admin_client, user):
    from rest_framework.test import APIClient

    key, raw = api_key_create(owner=user)
    response = _action(admin_client, ApiKey, "revoke_keys", [key])
    assert any("Revoked 1 API key(s)" in str(m) for m in response.context["messages"])
    key.refresh_from_db()
    assert key.revoked_at is not None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/healthz").status_code == 200  # anonymous route still fine
    assert client.get("/v1/tunings.list").status_code == 401


def test_it_never_shows_the_key_hash_in_the_admin(admin_client, user):
    key, _ = api_key_create(owner=user)
    html = admin_client.get(_url(ApiKey, "change", key.pk)).content.decode()
    assert key.key_hash not in html
    assert 'name="key_hash"' not in html


def test_it_registers_a_base_model_from_the_admin_with_the_service_checks(admin_client, tmp_path):
    good = write_fake_model(tmp_path / "good")
    response = admin_client.post(_url(BaseModel, "add"), {"name": "admin-llama", "path": str(good), "description": ""})
    assert response.status_code == 302
    model = BaseModel.objects.get(name="admin-llama")
    assert (model.architecture, model.parameter_count) == ("LlamaForCausalLM", FAKE_PARAMETER_COUNT)

    (good / "tokenizer.json").unlink()
    response = admin_client.post(_url(BaseModel, "add"), {"name": "other", "path": str(good), "description": ""})
    assert response.status_code == 200 and b"No tokenizer" in response.content
    response = admin_client.post(_url(BaseModel, "add"), {"name": "Bad Name", "path": str(tmp_path), "description": ""})
    assert response.status_code == 200 and b"Invalid base model name" in response.content
    assert BaseModel.objects.count() == 1


def test_it_re_points_a_base_model_path_from_the_change_page(admin_client, fake_base_model, tmp_path):
    moved = write_fake_model(tmp_path / "moved")
    response = admin_client.post(
        _url(BaseModel, "change", fake_base_model.pk), {"path": str(moved), "description": "moved"}
    )
    assert response.status_code == 302
    fake_base_model.refresh_from_db()
    assert fake_base_model.path == str(moved.resolve()) and fake_base_model.description == "moved"


def test_it_cancels_and_retries_from_the_job_page_buttons(admin_client, make_job):
    job = make_job(S.QUEUED)
    page = admin_client.get(_url(TuningJob, "change", job.pk)).content.decode()
    assert "Cancel job" in page and "Retry as a new job" not in page
    response = admin_client.post(_url(TuningJob, "cancel", job.pk), follow=True)
    assert response.redirect_chain[-1][0] == _url(TuningJob, "change", job.pk)
    job.refresh_from_db()
    assert job.status == S.CANCELLED
    page = response.content.decode()
    assert "Retry as a new job" in page and "Cancel job" not in page
    admin_client.post(_url(TuningJob, "retry", job.pk))
    assert TuningJob.objects.filter(status=S.QUEUED).count() == 1
    assert admin_client.get(_url(TuningJob, "retry", job.pk)).status_code == 405  # POST only


def test_it_refuses_job_page_buttons_without_the_change_permission(client, make_job, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(username="viewer", password="pw-viewer-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_tuningjob"))
    client.force_login(viewer)
    job = make_job(S.QUEUED)
    assert "Cancel job" not in client.get(_url(TuningJob, "change", job.pk)).content.decode()
    assert client.post(_url(TuningJob, "cancel", job.pk)).status_code == 403
    job.refresh_from_db()
    assert job.status == S.QUEUED


def test_it_offers_add_pages_only_where_a_service_creates_the_row(admin_client):
    assert admin_client.get(_url(ApiKey, "add")).status_code == 200
    assert admin_client.get(_url(BaseModel, "add")).status_code == 200
    for model in (TuningJob, TrainingFile, ModelVersion, Alias, AliasEvent, IdempotencyRecord):
        assert admin_client.get(_url(model, "add")).status_code == 403, model.__name__


def test_it_draws_the_curves_and_lists_only_messages_on_the_job_page(
    admin_client, make_job, django_assert_max_num_queries
):
    job = make_job(S.RUNNING)
    samples = [
        ("metrics", {"step": i, "loss": 2.0 / i, "lr": 1e-4, "eval_loss": 1.0 if i % 100 == 0 else None})
        for i in range(1, 501)
    ]
    job_metrics_events_add(job_id=job.id, samples=samples)
    job_event_add(job_id=job.id, message="<b>started</b>")

    with django_assert_max_num_queries(25):
        html = admin_client.get(_url(TuningJob, "change", job.pk)).content.decode()

    # One polyline per curve, with every point: 500 train, 5 eval, 500 lr.
    drawn = dict(re.findall(r'data-series="(\w+)" data-points="(\d+)"', html))
    assert drawn == {"train": "500", "eval": "5", "lr": "500"}
    # The metrics events are the curves, not 500 rows of raw JSON; the message is listed, escaped.
    assert "&quot;loss&quot;" not in html and '"loss"' not in html
    assert "&lt;b&gt;started&lt;/b&gt;" in html and "<b>started</b>" not in html
    assert f'href="/jobs/{job.pk}/"' in html
