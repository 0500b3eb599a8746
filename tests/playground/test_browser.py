"""The chat page's script in a real browser (Debian's Chromium through Playwright, Django's live
server): tokens rendered as they stream in, side by side, errors shown, Stop leaves an interrupted
answer. The gateway is the recording stand-in (``fake_gateway``), so no vLLM is needed.
Screenshots go to ``test-artifacts/screenshots/`` (``TUNINGLAB_SCREENSHOT_DIR`` overrides it).
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from playwright.sync_api import expect, sync_playwright

from playground.models import ChatMessage
from playground.services import chat_session_create
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, require_chromium, wait_until
from tuninglab.errors import ServiceUnavailableError

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser_page(live_server, user, monkeypatch):
    """A Chromium page with alice's session cookie (no login form needed)."""
    require_chromium()
    # Playwright's sync API keeps an event loop on this thread; the test's own ORM calls run
    # between its calls, never inside the loop, so Django's guard against async use is lifted.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    client = Client()
    client.force_login(user)
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value}
    # Playwright runs the test in a context of its own, where the ORM opens another connection:
    # the one opened out here (the login) is closed now and the other at the end, so on
    # PostgreSQL no session outlives the test and the test database can be dropped.
    connections.close_all()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{**cookie, "url": live_server.url}])
            yield context.new_page()
        finally:
            browser.close()
            connections.close_all()


def test_it_streams_both_sides_shows_errors_and_keeps_the_conversation(
    browser_page, live_server, user, served_base, bot, fake_gateway
):
    page = browser_page
    session = chat_session_create(owner=user, model="bot", compare_model="tiny-llama")
    fake_gateway.answers = {"bot": ["I am ", "<b>Tessera</b>", "."], "tiny-llama": ["Once ", "upon"]}
    page.goto(f"{live_server.url}/playground/sessions/{session.id}/")
    page.fill("#pg-prompt textarea", "Who are <i>you</i>?")
    page.keyboard.press("Enter")

    a = page.locator('.pg-column[data-side="a"] .pg-assistant').last
    b = page.locator('.pg-column[data-side="b"] .pg-assistant').last
    expect(a.locator(".pg-body")).to_have_text("I am <b>Tessera</b>.")  # text, not markup
    expect(b.locator(".pg-body")).to_have_text("Once upon")
    expect(a.locator(".pg-meta")).to_have_text("bot · stop · 7+3 tokens")
    expect(page.locator('.pg-column[data-side="b"] .pg-user .pg-body')).to_have_text("Who are <i>you</i>?")
    assert page.locator(".pg-messages b, .pg-messages i").count() == 0
    expect(page.locator("#pg-title")).to_have_text("Who are <i>you</i>?")  # named after the first prompt

    fake_gateway.answers["tiny-llama"] = ServiceUnavailableError(
        "The inference server for tiny-llama is not available: vLLM is starting.",
        code="inference_unavailable",
        suggestion="Retry in 5 s.",
    )
    page.fill("#pg-prompt textarea", "And now?")
    page.click("#pg-send")
    expect(b.locator(".pg-error code")).to_have_text("inference_unavailable")
    expect(b.locator(".pg-error")).to_contain_text("Retry in 5 s.")
    expect(a.locator(".pg-meta")).to_have_text("bot · stop · 7+3 tokens")
    page.screenshot(path=str(SCREENSHOTS / "playground-side-by-side.png"), full_page=True)

    # Reopened, the page shows the same conversation from the database.
    page.reload()
    expect(page.locator('.pg-column[data-side="a"] .pg-msg')).to_have_count(4)
    expect(page.locator('.pg-column[data-side="b"] .pg-error code')).to_have_text("inference_unavailable")
    assert ChatMessage.objects.filter(role="assistant").count() == 4

    page.goto(f"{live_server.url}/playground/")
    expect(page.locator(".pg-sessions a")).to_have_text("Who are <i>you</i>?")  # titled after the first prompt
    expect(page.locator("#pg-models option")).to_have_count(2)
    page.screenshot(path=str(SCREENSHOTS / "playground-index.png"), full_page=True)


def test_stop_leaves_an_interrupted_answer_with_what_had_arrived(
    browser_page, live_server, user, served_base, bot, fake_gateway
):
    page = browser_page
    session = chat_session_create(owner=user, model="bot")
    fake_gateway.answers = {"bot": [f"w{i} " for i in range(200)]}
    fake_gateway.delay = 0.05
    page.goto(f"{live_server.url}/playground/sessions/{session.id}/")
    page.fill("#pg-prompt textarea", "Count slowly")
    page.click("#pg-send")
    body = page.locator(".pg-assistant .pg-body").last
    expect(body).to_contain_text("w2 ")
    page.click("#pg-stop")
    expect(page.locator(".pg-assistant .pg-meta").last).to_have_text("interrupted")
    expect(page.locator("#pg-send")).to_be_enabled()

    # The server notices at its next write to the closed connection and stores what it had sent.
    stored = ChatMessage.objects.filter(role="assistant", finish_reason="interrupted")
    assert wait_until(stored.exists, timeout=30)
    answer = stored.get()
    assert answer.content.startswith("w0 w1 w2 ") and len(answer.content.split()) < 200
    assert wait_until(lambda: fake_gateway.released == 1, timeout=10)
