"""The pages' scripts in a real browser (Debian's Chromium through Playwright, Django's live server).

The job page redraws its charts and log from live.json as rows arrive and stops at a terminal
state; the model page's traffic table follows the counters, and its promote form asks first.
Screenshots go to ``test-artifacts/screenshots/`` (``TUNINGLAB_SCREENSHOT_DIR`` overrides it).
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from registry.models import Alias
from registry.services.aliases import model_promote
from registry.services.traffic import traffic_record
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium
from tests.webui.conftest import metrics_sample
from tunings.services.jobs import job_metrics_events_add
from tunings.services.state import job_event_add, tuning_job_fail

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


def on_thread(fn, *args, **kwargs):
    """Run an ORM call on its own thread (closing its connection after).

    Playwright's sync API runs an event loop on the test's thread: Django refuses ORM calls
    there, and connections opened in that context would outlive the test database.
    """
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised on the test's thread
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def browser_page(live_server, user):
    """A Chromium page logged in as alice through the login form (list it after the data fixtures:
    from here on the test's thread runs Playwright's event loop)."""
    require_chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live_server.url}/accounts/login/?next=/jobs/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", "pw-alice-123")
            page.click("#login-button")
            page.wait_for_url("**/jobs/")
            yield page
            # Leave the page first: no poll may be in flight (holding a server-side connection) at the end.
            page.goto("about:blank")
        finally:
            browser.close()


def test_the_job_page_follows_metrics_events_and_stops_when_the_job_fails(make_job, live_server, browser_page):
    page = browser_page
    job = on_thread(make_job, status="running", total_steps=20)
    on_thread(job_metrics_events_add, job_id=job.id, samples=[metrics_sample(1, total=20, loss=2.0, lr=1e-4)])
    page.goto(f"{live_server.url}/jobs/{job.id}/")
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-train-points", "1")
    page.evaluate("window.__sameDocument = true")

    samples = [
        metrics_sample(s, total=20, loss=2.0 / s, lr=1e-4, eval_loss=(3.0 / s if s % 4 == 0 else None))
        for s in range(2, 13)
    ]
    on_thread(job_metrics_events_add, job_id=job.id, samples=samples)
    on_thread(job_event_add, job_id=job.id, message="<b>not bold</b>")
    expect(chart).to_have_attribute("data-train-points", "12", timeout=15_000)
    expect(chart).to_have_attribute("data-eval-points", "3")
    assert page.locator("#loss-chart polyline[data-series='train']").get_attribute("data-points") == "12"
    assert page.locator("#lr-chart polyline").count() == 1
    # Every event shows once, although their seqs (ns clock readings) are beyond JS's exact integers.
    expect(page.locator("#events li")).to_have_count(13)
    newest = page.locator("#events li .message").first
    expect(newest).to_have_text("<b>not bold</b>")  # shown as text, not markup
    assert page.locator("#events b").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "webui-job-live.png"), full_page=True)

    on_thread(
        tuning_job_fail, job_id=job.id, code="out_of_memory", message="Out of memory.", suggestion="Lower batch_size."
    )
    expect(page.locator("#job-status")).to_have_text("failed", timeout=15_000)
    expect(page.locator("#job-error-code")).to_have_text("out_of_memory")
    assert page.locator("#cancel-form").count() == 0
    assert page.evaluate("window.__sameDocument === true")  # never reloaded
    # Polling stopped: a row written now never shows up.
    on_thread(job_metrics_events_add, job_id=job.id, samples=[metrics_sample(13, total=20, loss=0.1, lr=1e-4)])
    page.wait_for_timeout(3500)
    assert chart.get_attribute("data-train-points") == "12"


def test_the_model_page_follows_traffic_and_promotes_after_confirmation(make_version, user, live_server, browser_page):
    page = browser_page
    v1 = on_thread(make_version)
    on_thread(make_version)
    on_thread(model_promote, owner=user, name="bot", version=1)
    page.goto(f"{live_server.url}/models/bot/")
    requests = page.locator("#traffic tr[data-version='1'] [data-key='requests']")
    expect(requests).to_have_text("0")
    for _ in range(3):
        on_thread(traffic_record, version_id=v1.id, latency_ms=20.0, prompt_tokens=4, completion_tokens=6)
    expect(requests).to_have_text("3", timeout=15_000)
    expect(page.locator("#traffic tr[data-version='1'] [data-key='completion_tokens']")).to_have_text("18")

    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.locator("#versions tr[data-version='2'] .promote-button").click()
    expect(page.locator("#aliases tr[data-alias='production'] td.num")).to_have_text("v2")
    assert dialogs == ["Point this alias at v2?"]
    assert on_thread(lambda: Alias.objects.get(registered_model__owner=user, alias="production").version.version) == 2
    expect(page.locator("#messages")).to_contain_text("bot@production now points at v2.")
    page.screenshot(path=str(SCREENSHOTS / "webui-model.png"), full_page=True)
