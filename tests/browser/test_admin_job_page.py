"""The admin's job page in a real browser stays a page, not a log: curves, not 1,000 JSON rows.

Before, every metrics event was an inline row of raw JSON, and a run of a few hundred steps
made the page ~8,600 px tall. Now the metrics are drawn as the curves and the event list holds
the newest messages only, collapsed. Chromium measures the rendered page.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tunings.models import TuningJob
from tunings.services.jobs import job_metrics_events_add
from tunings.services.state import job_event_add

pytestmark = [pytest.mark.timeout(180), pytest.mark.django_db(transaction=True)]
MAX_HEIGHT_PX = 3000


def test_it_keeps_a_long_runs_admin_page_short_and_draws_its_curves(live_server, make_job, django_user_model):
    require_chromium()
    django_user_model.objects.create_superuser(username="root", password="pw-root-12345", email="root@example.com")
    owner = django_user_model.objects.create_user(username="ada", password="pw-ada-12345")
    job = make_job(owner, status=TuningJob.Status.RUNNING)
    samples = [
        ("", {"step": i, "loss": 2.0 / i, "lr": 1e-4, "eval_loss": 1.0 if i % 100 == 0 else None})
        for i in range(1, 1001)
    ]
    job_metrics_events_add(job_id=job.id, samples=samples)
    for i in range(60):
        job_event_add(job_id=job.id, message=f"message {i}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/tunings/tuningjob/{job.id}/change/")
            page.fill("#id_username", "root")
            page.fill("#id_password", "pw-root-12345")
            page.click("[type=submit]")
            page.wait_for_selector(".job-curves svg")
            height = page.evaluate("document.documentElement.scrollHeight")
            drawn = page.eval_on_selector_all(
                ".job-curves polyline", "nodes => nodes.map(n => [n.dataset.series, Number(n.dataset.points)])"
            )
            page.screenshot(path=str(SCREENSHOTS / "admin-job-page.png"), full_page=True)
        finally:
            browser.close()

    assert dict(drawn) == {"train": 1000, "eval": 10, "lr": 1000}
    assert height < MAX_HEIGHT_PX, height
