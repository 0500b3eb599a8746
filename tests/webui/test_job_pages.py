"""Job pages: login, owner scoping, the DOM contract, live.json, curves.svg, cancel, CSRF, escaping."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tunings.models import Checkpoint, JobEvent, TuningJob
from tunings.services.state import job_event_add, tuning_job_fail

pytestmark = pytest.mark.django_db


class Elements(HTMLParser):
    """Every element's tag, attributes and direct text, by id (enough for the DOM contract)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self._stack: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        if element["attrs"].get("id"):
            self.by_id[element["attrs"]["id"]] = element
        if tag not in {"input", "br", "meta", "link", "img", "line", "rect", "circle", "polyline"}:
            self._stack.append(element)

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        if self._stack:
            self._stack[-1]["text"] += data


def job_urls(job) -> dict[str, str]:
    kwargs = {"job_id": job.id}
    return {
        "detail": reverse("webui:job-detail", kwargs=kwargs),
        "live": reverse("webui:job-live", kwargs=kwargs),
        "svg": reverse("webui:job-curves-svg", kwargs=kwargs),
        "cancel": reverse("webui:job-cancel", kwargs=kwargs),
    }


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_the_urls_are_the_documented_ones(make_job):
    job = make_job()
    assert job_urls(job) == {
        "detail": f"/jobs/{job.id}/",
        "live": f"/jobs/{job.id}/live.json",
        "svg": f"/jobs/{job.id}/curves.svg",
        "cancel": f"/jobs/{job.id}/cancel",
    }
    assert reverse("webui:job-list") == "/jobs/"


def test_every_job_page_needs_a_login(client, make_job):
    job = make_job()
    urls = job_urls(job)
    for url in ("/jobs/", urls["detail"], urls["live"], urls["svg"]):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"/accounts/login/?next={url}"
    response = client.post(urls["cancel"])
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    job.refresh_from_db()
    assert job.status == "queued"


def test_the_login_page_renders_and_logs_in(client, user):
    page = client.get("/accounts/login/?next=/jobs/")
    assert page.status_code == 200 and 'id="login-form"' in page.content.decode()
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123", "next": "/jobs/"})
    assert response.status_code == 302 and response["Location"] == "/jobs/"
    assert client.get("/jobs/").status_code == 200


def test_another_users_job_is_a_404_everywhere(alice_client, make_job, other_user, add_metrics):
    theirs = make_job(owner=other_user)
    add_metrics(theirs, [1, 2])
    urls = job_urls(theirs)
    for url in (urls["detail"], urls["live"], urls["svg"]):
        assert alice_client.get(url).status_code == 404, url
    assert alice_client.post(urls["cancel"]).status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == "queued"
    assert alice_client.get("/jobs/no-such-job/").status_code == 404


def test_the_list_shows_only_my_jobs_newest_first_and_pages_by_50(alice_client, make_job, other_user):
    mine = [make_job() for _ in range(52)]
    theirs = make_job(owner=other_user)
    first = alice_client.get("/jobs/").content.decode()
    ids = re.findall(r'<tr data-job-id="([^"]+)"', first)
    assert len(ids) == 50
    assert theirs.id not in first
    newest_first = [j.id for j in sorted(mine, key=lambda j: (j.created_at, j.id), reverse=True)]
    assert ids == newest_first[:50]
    second = alice_client.get("/jobs/?page=2").content.decode()
    assert re.findall(r'<tr data-job-id="([^"]+)"', second) == newest_first[50:]


def test_the_list_filters_by_status_and_reports_a_bad_filter(alice_client, make_job):
    running, queued = make_job(status="running", progress=40.0), make_job()
    page = alice_client.get("/jobs/?status=running").content.decode()
    assert running.id in page and queued.id not in page
    assert "40%" in page
    response = alice_client.get("/jobs/?status=bogus")
    assert response.status_code == 200
    assert any("Unknown status 'bogus'" in m for m in texts(response))
    assert running.id in response.content.decode() and queued.id in response.content.decode()


def test_the_detail_page_keeps_the_dom_contract(alice_client, make_job, add_metrics):
    job = make_job(status="running", progress=50.0, current_step=5, total_steps=10, eta_seconds=125.0)
    add_metrics(job, range(1, 6), eval_every=2)
    page = alice_client.get(job_urls(job)["detail"]).content.decode()
    dom = Elements(page).by_id
    assert dom["job-status"]["text"] == "running"
    assert dom["loss-chart"]["attrs"]["data-train-points"] == "5"
    assert dom["loss-chart"]["attrs"]["data-eval-points"] == "2"
    assert "lr-chart" in dom and "events" in dom and "checkpoints" in dom and "config" in dom and "eta" in dom
    assert dom["progress-bar"]["tag"] == "progress" and dom["progress-bar"]["attrs"]["value"] == "50.0"
    assert dom["eta"]["attrs"]["data-seconds"] == "125.0"
    form = dom["cancel-form"]["attrs"]
    assert (form["method"], form["action"]) == ("post", f"/jobs/{job.id}/cancel")
    assert form["onsubmit"] == "return confirm('Cancel this job?')"
    assert dom["cancel-button"]["tag"] == "button"
    cancel_form = page[page.index('id="cancel-form"') : page.index("</form>", page.index('id="cancel-form"'))]
    assert 'name="csrfmiddlewaretoken"' in cancel_form
    assert dom["download-svg"]["attrs"]["href"] == f"/jobs/{job.id}/curves.svg"
    # The charts are drawn server-side too, with one polyline per curve, and the page loads its scripts.
    assert page.count('data-series="train" data-points="5"') == 1
    assert page.count('data-series="eval" data-points="2"') == 1
    assert "/static/webui/job.js" in page and "/static/webui/charts.js" in page


def test_a_finished_job_has_no_cancel_button_and_shows_its_error(alice_client, make_job):
    job = make_job(status="running")
    tuning_job_fail(job_id=job.id, code="out_of_memory", message="CUDA out of memory.", suggestion="Lower batch_size.")
    page = alice_client.get(job_urls(job)["detail"]).content.decode()
    dom = Elements(page).by_id
    assert dom["job-status"]["text"] == "failed"
    assert "cancel-form" not in dom and "cancel-button" not in dom
    assert dom["job-error-code"]["text"] == "out_of_memory"
    assert dom["job-error-message"]["text"] == "CUDA out of memory."
    assert "Lower batch_size." in page


def test_the_config_block_is_the_jobs_configuration_as_json(alice_client, make_job):
    job = make_job(lora_rank=4, seed=7, metadata={"team": "nlp"})
    page = alice_client.get(job_urls(job)["detail"]).content.decode()
    text = Elements(page).by_id["config"]["text"]
    config = json.loads(text.replace("&quot;", '"'))
    assert config["lora"]["rank"] == 4 and config["seed"] == 7 and config["metadata"] == {"team": "nlp"}
    assert config["training_options"]["max_steps"] == 10 and config["model"] == "fake-llama"


def test_live_json_reports_state_points_events_and_checkpoints(alice_client, make_job, add_metrics, settings):
    job = make_job(status="running", progress=30.0, current_step=3, total_steps=10, eta_seconds=70.0)
    add_metrics(job, range(1, 4), eval_every=3)
    job_event_add(job_id=job.id, message="Checkpoint saved at step 3.", data={"step": 3, "worker": "host-1"})
    ckpt_dir = settings.DATA_DIR / "jobs" / job.id / "checkpoint-3"
    ckpt_dir.mkdir(parents=True)
    Checkpoint.objects.create(job=job, step=3, path=str(ckpt_dir), metrics={"loss": 0.66, "eval_loss": 0.83})
    body = alice_client.get(job_urls(job)["live"]).json()
    assert body["status"] == "running" and body["terminal"] is False
    assert body["progress"] == {"step": 3, "total_steps": 10, "percent": 30.0}
    assert body["eta_seconds"] == 70.0
    assert [s for s, _ in body["train"]] == [1, 2, 3]
    assert body["eval"] == [[3, pytest.approx(2.5 / 3)]]
    assert len(body["lr"]) == 3
    assert [e["message"] for e in body["events"]][-1] == "Checkpoint saved at step 3."
    assert len(body["events"]) == 4 and all("data" not in e for e in body["events"])  # no operator detail
    assert body["last_seq"] == JobEvent.objects.filter(job=job).order_by("-seq").first().seq
    assert body["checkpoints"] == [
        {
            "step": 3,
            "name": body["checkpoints"][0]["name"],
            "created_at": body["checkpoints"][0]["created_at"],
            "saved": body["checkpoints"][0]["saved"],
            "loss": 0.66,
            "eval_loss": 0.83,
            "trained_tokens": None,
        }
    ]
    assert str(ckpt_dir) not in str(body)


def test_live_json_pages_by_after_seq(alice_client, make_job, add_metrics):
    job = make_job(status="running")
    add_metrics(job, range(1, 4))
    url = job_urls(job)["live"]
    first = alice_client.get(url).json()
    assert len(first["train"]) == 3 and len(first["events"]) == 3
    again = alice_client.get(url, {"after_seq": first["last_seq"]}).json()
    assert again["train"] == again["eval"] == again["lr"] == again["events"] == []
    assert again["last_seq"] == first["last_seq"]
    add_metrics(job, range(4, 6), eval_every=5)
    job_event_add(job_id=job.id, message="halfway")
    later = alice_client.get(url, {"after_seq": first["last_seq"]}).json()
    assert [s for s, _ in later["train"]] == [4, 5] and [s for s, _ in later["eval"]] == [5]
    assert [e["message"] for e in later["events"]][-1] == "halfway" and len(later["events"]) == 3
    assert later["last_seq"] > first["last_seq"]
    # Seqs are ns clock readings, past JavaScript's exact integers: the page reads them as text.
    assert later["last_seq_str"] == str(later["last_seq"])
    assert all(isinstance(e["seq"], str) for e in later["events"])
    assert alice_client.get(url, {"after_seq": later["last_seq_str"]}).json()["events"] == []
    # A garbage after_seq reads from the start rather than failing.
    assert len(alice_client.get(url, {"after_seq": "x"}).json()["train"]) == 5


def test_live_json_sends_at_most_the_newest_50_new_events(alice_client, make_job, add_metrics):
    job = make_job(status="running")
    add_metrics(job, range(1, 81), total=80)
    body = alice_client.get(job_urls(job)["live"]).json()
    assert len(body["train"]) == 80  # every point for the chart
    steps = [int(e["message"].split()[1].split("/")[0]) for e in body["events"]]
    assert steps == list(range(31, 81))  # the newest 50 events, oldest first


def test_live_json_says_terminal_once_the_job_finished(alice_client, make_job):
    job = make_job(status="running")
    tuning_job_fail(job_id=job.id, code="boom", message="It broke.")
    body = alice_client.get(job_urls(job)["live"]).json()
    assert body["terminal"] is True and body["status"] == "failed"
    assert body["error"] == {"code": "boom", "message": "It broke.", "param": None, "suggestion": None}
    assert body["eta_seconds"] is None


def test_the_events_log_shows_the_newest_50_and_pages_to_older_ones(alice_client, make_job):
    job = make_job(status="running")
    for i in range(120):
        job_event_add(job_id=job.id, message=f"event {i}")
    page = alice_client.get(job_urls(job)["detail"]).content.decode()
    shown = [int(n) for n in re.findall(r'<span class="message">event (\d+)</span>', page)]
    assert shown == list(range(119, 69, -1))
    older = re.search(r'id="events-older" href="\?before=(\d+)"', page)
    page2 = alice_client.get(job_urls(job)["detail"], {"before": older.group(1)}).content.decode()
    assert [int(n) for n in re.findall(r'<span class="message">event (\d+)</span>', page2)] == list(range(69, 19, -1))
    older = re.search(r'id="events-older" href="\?before=(\d+)"', page2)
    page3 = alice_client.get(job_urls(job)["detail"], {"before": older.group(1)}).content.decode()
    assert [int(n) for n in re.findall(r'<span class="message">event (\d+)</span>', page3)] == list(range(19, -1, -1))
    assert 'id="events-older"' not in page3 and 'id="events-newest"' in page3


def test_curves_svg_is_an_attachment_with_both_charts(alice_client, make_job, add_metrics):
    job = make_job(status="running")
    add_metrics(job, range(1, 8), eval_every=2)
    response = alice_client.get(job_urls(job)["svg"])
    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    assert response["Content-Disposition"] == f'attachment; filename="{job.id}-curves.svg"'
    root = ET.fromstring(response.content)  # noqa: S314 - our own server's output
    lines = {
        line.get("data-series"): int(line.get("data-points"))
        for line in root.iter("{http://www.w3.org/2000/svg}polyline")
    }
    assert lines == {"train": 7, "eval": 3, "learning rate": 7}


def test_cancelling_a_queued_job_cancels_it(alice_client, make_job):
    job = make_job()
    response = alice_client.post(job_urls(job)["cancel"])
    assert response.status_code == 302 and response["Location"] == job_urls(job)["detail"]
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert texts(response) == [f"Job {job.id} cancelled."]
    page = alice_client.get(job_urls(job)["detail"]).content.decode()
    assert Elements(page).by_id["job-status"]["text"] == "cancelled"


def test_cancelling_a_running_job_requests_it(alice_client, make_job):
    job = make_job(status="running")
    response = alice_client.post(job_urls(job)["cancel"])
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("running", True)
    assert "stops at the next step" in texts(response)[0]


@pytest.mark.parametrize("status", ["succeeded", "cancelled", "failed"])
def test_cancelling_a_finished_job_is_a_message_not_an_error(alice_client, make_job, status):
    job = make_job(status=status)
    response = alice_client.post(job_urls(job)["cancel"], follow=True)
    assert response.status_code == 200
    job.refresh_from_db()
    assert job.status == status
    page = response.content.decode()
    assert f"Cannot cancel job {job.id}: it is {status}. (invalid_state)" in page
    assert Elements(page).by_id["job-status"]["text"] == status


def test_cancel_is_post_only(alice_client, make_job):
    job = make_job()
    assert alice_client.get(job_urls(job)["cancel"]).status_code == 405
    job.refresh_from_db()
    assert job.status == "queued"


def test_cancel_needs_the_csrf_token(user, make_job):
    job = make_job()
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(job_urls(job)["cancel"]).status_code == 403
    job.refresh_from_db()
    assert job.status == "queued"
    page = strict.get(job_urls(job)["detail"]).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert strict.post(job_urls(job)["cancel"], {"csrfmiddlewaretoken": token}).status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_user_data_is_escaped(alice_client, make_job):
    attack = "<script>alert(1)</script>"
    job = make_job(suffix=attack, model_name="x", metadata={"note": attack})
    job_event_add(job_id=job.id, message=f"Unexpected output: {attack}")
    for url in ("/jobs/", job_urls(job)["detail"]):
        page = alice_client.get(url).content.decode()
        assert attack not in page, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, url
    # live.json carries the text as data (the page's script sets it with textContent), never as HTML.
    response = alice_client.get(job_urls(job)["live"])
    assert response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.json()["events"][-1]["message"] == f"Unexpected output: {attack}"


def test_the_pages_query_count_does_not_grow_with_events(
    alice_client, make_job, add_metrics, settings, django_assert_max_num_queries
):
    def job_with(n: int) -> TuningJob:
        job = make_job(status="running")
        add_metrics(job, range(1, n + 1), eval_every=5, total=n)
        for step in range(5, n + 1, 5):
            job_event_add(job_id=job.id, message=f"note {step}")
            ckpt = settings.DATA_DIR / "jobs" / job.id / f"checkpoint-{step}"
            ckpt.mkdir(parents=True)
            Checkpoint.objects.create(job=job, step=step, path=str(ckpt), metrics={"loss": 1.0})
        return job

    small = job_urls(job_with(5))
    with CaptureQueriesContext(connection) as detail:
        assert alice_client.get(small["detail"]).status_code == 200
    with CaptureQueriesContext(connection) as live:
        assert alice_client.get(small["live"]).status_code == 200
    big = job_urls(job_with(200))
    with django_assert_max_num_queries(len(detail)):
        assert alice_client.get(big["detail"]).status_code == 200
    with django_assert_max_num_queries(len(live)):
        assert alice_client.get(big["live"]).status_code == 200


def test_the_job_list_query_count_does_not_grow_with_jobs(alice_client, make_job, django_assert_max_num_queries):
    make_job()
    with CaptureQueriesContext(connection) as few:
        alice_client.get("/jobs/")
    for _ in range(30):
        make_job()
    with django_assert_max_num_queries(len(few)):
        alice_client.get("/jobs/")
