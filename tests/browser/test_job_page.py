"""A running job's page in a real browser: the curve gains points as steps arrive, cancel stops it.

The app is Django's live server (a real HTTP server in this process, on the test database);
the job runs on a runner thread with the scripted training child (a real subprocess speaking
the engine's protocol through the real relay), so steps arrive at a known pace. Debian's
Chromium, driven by Playwright, logs in through the login form, watches ``/jobs/<id>/`` redraw
without a reload, and presses the cancel button (accepting the confirmation dialog).

Screenshots go to ``test-artifacts/screenshots/`` (``TUNINGLAB_SCREENSHOT_DIR`` overrides it);
CI keeps that folder (README, "Tests").
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium, wait_until
from tunings.models import TuningJob
from workers.runner import run_job

pytestmark = [pytest.mark.timeout(240), pytest.mark.django_db(transaction=True)]


def start_runner(job_id: str) -> threading.Thread:
    def target() -> None:
        try:
            run_job(job_id, worker_id="browser-test", queue="cpu")
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def train_points(page) -> int:
    return int(page.get_attribute("#loss-chart", "data-train-points") or 0)


def test_it_draws_a_running_jobs_curve_live_and_cancels_it_from_the_page(
    live_server, fake_engine, make_job, django_user_model, settings
):
    require_chromium()
    settings.TUNINGLAB = {**settings.TUNINGLAB, "PROGRESS_WRITE_SECONDS": 0.1, "HEARTBEAT_SECONDS": 0.5}
    # 600 steps 0.1 s apart: a minute of training unless cancelled; loss 2/step, lr 1e-4.
    fake_engine([{"train": {"steps": 600, "delay": 0.1}}, {"adapter": True}, {"done": True}])
    owner = django_user_model.objects.create_user(username="ada", password="pw-ada-12345")
    job = make_job(owner, hyperparameters={"max_steps": 600, "batch_size": 2})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live_server.url}/jobs/{job.id}/")
            assert "/accounts/login/" in page.url  # login required
            page.fill("#id_username", "ada")
            page.fill("#id_password", "pw-ada-12345")
            page.click("[type=submit]")
            page.wait_for_url(f"**/jobs/{job.id}/")
            expect(page.locator("#job-status")).to_have_text("queued")

            thread = start_runner(job.id)
            expect(page.locator("#job-status")).to_have_text("running", timeout=30_000)
            assert wait_until(lambda: train_points(page) >= 5, timeout=30)
            first = train_points(page)
            page.screenshot(path=str(SCREENSHOTS / "job-page-running-1.png"), full_page=True)
            # Without a reload: the same document, more points (the page polls live.json).
            page.evaluate("window.__sameDocument = true")
            assert wait_until(lambda: train_points(page) >= first + 10, timeout=30)
            second = train_points(page)
            assert page.evaluate("window.__sameDocument === true")
            page.screenshot(path=str(SCREENSHOTS / "job-page-running-2.png"), full_page=True)
            assert 5 <= first < second < 600

            dialogs: list[str] = []

            def accept(dialog) -> None:
                dialogs.append(dialog.message)
                dialog.accept()

            page.on("dialog", accept)
            page.click("#cancel-button")
            expect(page.locator("#job-status")).to_have_text("cancelled", timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "job-page-cancelled.png"), full_page=True)
            assert dialogs, "cancel asked for no confirmation"
            assert page.locator("#cancel-button").count() == 0  # a terminal job has no cancel button
        finally:
            browser.close()

    thread.join(timeout=60)
    assert not thread.is_alive()
    job.refresh_from_db()
    assert job.status == TuningJob.Status.CANCELLED
    assert second <= job.current_step < 600  # stopped mid-run, after the steps the page showed
    for name in ("job-page-running-1.png", "job-page-running-2.png", "job-page-cancelled.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
