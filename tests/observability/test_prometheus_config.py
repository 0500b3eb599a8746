"""``deploy/prometheus.yml`` is a config Prometheus accepts, and a real Prometheus scrapes the app.

Debian's ``prometheus`` package provides both binaries (``/usr/bin/promtool`` and
``/usr/bin/prometheus``). Without them these tests skip locally and fail under ``CI=true``
(``scripts/run_tests.sh`` installs the package in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, skip_or_fail_in_ci, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"
PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS = Path("/usr/bin/prometheus")


def require_binary(binary: Path) -> None:
    if binary.exists():
        return
    skip_or_fail_in_ci(f"needs {binary} (Debian package `prometheus`: apt-get install prometheus)")


def test_it_validates_deploy_prometheus_yml_with_promtool() -> None:
    require_binary(PROMTOOL)
    result = subprocess.run([str(PROMTOOL), "check", "config", str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    # The check above must be able to fail: the same file with a bad scrape interval does.
    require_binary(PROMTOOL)
    broken = tmp_path / "prometheus.yml"
    broken.write_text(CONFIG.read_text().replace("scrape_interval: 15s", "scrape_interval: fifteen"))
    result = subprocess.run([str(PROMTOOL), "check", "config", str(broken)], capture_output=True, timeout=60)
    assert result.returncode != 0


def test_it_scrapes_the_web_app_vllm_and_a_celery_worker_on_their_default_ports() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {
        "tuninglab": ("/metrics", "127.0.0.1:8000"),
        "vllm": ("/metrics", "127.0.0.1:8100"),
        "celery": ("/metrics", "127.0.0.1:9200"),
    }


@contextlib.contextmanager
def running_prometheus(config: dict, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus on a free port with ``config``; its URL. Stopped (its group) on the way out."""
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        str(PROMETHEUS),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


@pytest.fixture
def prometheus_server(tmp_path: Path, live_server) -> Iterator[str]:
    """A real Prometheus scraping the live test server's /metrics every second."""
    require_binary(PROMETHEUS)
    app = urllib.parse.urlsplit(live_server.url).netloc
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [app]}]}
        for job in config["scrape_configs"]
        if job["job_name"] == "tuninglab"
    ]
    with running_prometheus(config, tmp_path) as server:
        yield server


def query(server: str, promql: str) -> list[dict]:
    url = f"{server}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]
    except OSError:  # still starting
        return []


@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_a_real_prometheus_scrapes_the_live_app_and_stores_the_labs_metrics(prometheus_server: str) -> None:
    def value(promql: str) -> str | None:
        result = query(prometheus_server, promql)
        return result[0]["value"][1] if result else None

    assert wait_until(lambda: value('up{job="tuninglab"}') == "1", timeout=60), query(prometheus_server, "up")
    # The lab's own collector answered too (it read the tables), not only django-prometheus.
    assert wait_until(lambda: value("tuninglab_metrics_database_up") == "1", timeout=20)
    # django-prometheus's request counter, which counts the scrapes themselves once they ended.
    scrapes = 'django_http_requests_total_by_view_transport_method_total{view="prometheus-django-metrics"}'
    assert wait_until(lambda: float(value(scrapes) or 0) >= 1, timeout=20)
