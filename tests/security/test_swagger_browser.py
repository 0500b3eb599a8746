"""``/api/docs/`` in a real browser on a machine without internet: the operations are listed.

Swagger UI's JS and CSS come from our own static files (drf-spectacular-sidecar, served by
WhiteNoise); a page that pulled them from a CDN renders blank where the admin's browser has no
route out. The app runs as documented for a real setup: gunicorn, ``DEBUG`` off, no
``collectstatic``. Debian's Chromium (``/usr/bin/chromium``) loads the page headless with every
request recorded, and every request that is not for 127.0.0.1 is refused, as an air gap would.

Runs in the SQLite pass only (``scripts/run_tests.sh`` leaves it out of the PostgreSQL pass): the
page needs no database. Without Chromium it skips locally and fails under ``CI=true``
(``scripts/run_tests.sh`` installs Chromium in CI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, free_port, require_chromium

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Operations of each app that Swagger UI must list (their paths as the schema spells them).
EXPECTED_PATHS = [
    "/v1/fine_tuning/jobs/",
    "/v1/fine_tuning/jobs/{job_id}/",
    "/v1/files/",
    "/v1/models/",
    "/v1/chat/completions/",
    "/healthz",
]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def gunicorn_server(tmp_path) -> Iterator[str]:
    """The app under gunicorn with DEBUG off and nothing collected; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "STATIC_ROOT"}}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tuninglab.settings",
            "DEBUG": "false",
            "TUNINGLAB_DATA_DIR": str(tmp_path / "data"),
            # The docs page reads no table; no worker thread needs an (unmigrated) database.
            "TUNINGLAB_INPROCESS_WORKER": "false",
        }
    )
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "tuninglab.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"],
            cwd=REPO_ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None, log_path.read_text(errors="replace")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_it_lists_the_operations_in_swagger_ui_with_no_request_leaving_the_machine(gunicorn_server):
    require_chromium()
    requested: list[str] = []
    refused: list[str] = []

    def air_gap(route) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.route("**/*", air_gap)
            page.on("request", lambda request: requested.append(request.url))
            response = page.goto(f"{gunicorn_server}/api/docs/", wait_until="load")
            assert response is not None and response.status == 200
            try:
                page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            except PlaywrightTimeoutError:
                pytest.fail(f"Swagger UI rendered no operation (a blank page); refused requests: {refused}")
            listed = page.eval_on_selector_all(
                ".opblock-summary-path", "nodes => nodes.map(n => n.getAttribute('data-path'))"
            )
        finally:
            browser.close()

    assert refused == []
    remote = [url for url in requested if urlsplit(url).scheme in {"http", "https"}]
    assert remote, "the page made no request at all"
    assert {urlsplit(url).hostname for url in remote} <= LOCAL_HOSTS, remote
    # Swagger UI's own bundle came from our static files, and the schema from our API.
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in url for url in remote)
    assert any(urlsplit(url).path == "/api/schema/" for url in remote)
    for path in EXPECTED_PATHS:
        assert path in listed, f"{path} is not listed in Swagger UI (listed: {sorted(set(listed))})"
    assert len(set(listed)) >= 30
