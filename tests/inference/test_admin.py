"""Inference admin: vLLM processes (with the tail of their log), routes with their split, shadow
records — all view-only for a superuser — and the live traffic on a model version's page."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from inference.models import Route, RouteSplit, ServingProcess, ShadowRecord
from registry.models import ModelVersion
from registry.services.traffic import traffic_record

# The registry suite's version fixtures (the F811 noqas below: pytest injects them by name).
from tests.registry.conftest import make_version, peft_adapter, tiny_adapter_version, tiny_base  # noqa: F401
from tests.tuninglab.conftest import training_file  # noqa: F401

pytestmark = pytest.mark.django_db


def _url(model, name: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{name}", args=args)


def _page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


def _text(cell: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()


def _readonly(page: str, field: str) -> str:
    """The text a view-only change page shows for ``field``."""
    match = re.search(rf'class="[^"]*field-{field}[^"]*".*?<div class="readonly">(.*?)</div>', page, flags=re.S)
    assert match, field
    return _text(match.group(1))


def _assert_view_only(client, model, obj) -> None:
    change = _url(model, "change", obj.pk)
    page = _page(client, change)
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert client.post(change, {}).status_code == 403
    assert client.get(_url(model, "add")).status_code == 403
    assert client.get(_url(model, "delete", obj.pk)).status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()


@pytest.fixture
def process(tmp_path):
    log = tmp_path / "vllm.log"
    lines = [f"INFO line {n:03d}" for n in range(1, 100)] + ["ERROR <script>alert(1)</script> & done"]
    log.write_text("\n".join(lines) + "\n")
    return ServingProcess.objects.create(
        base_name="tiny-llama",
        status=ServingProcess.Status.READY,
        url="http://127.0.0.1:8199",
        pid=4242,
        restarts=3,
        loaded_adapters=["mv-aaaaaaaaaaaaaaaaaaaaaaaa", "mv-bbbbbbbbbbbbbbbbbbbbbbbb"],
        ready_at=timezone.now(),
        argv=["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"],
        log_path=str(log),
    )


def test_it_shows_a_vllm_process_with_the_last_60_log_lines(admin_client, process):
    page = _page(admin_client, _url(ServingProcess, "change", process.pk))
    assert "Last 60 log lines" in page
    assert (_readonly(page, "status"), _readonly(page, "restarts"), _readonly(page, "pid")) == ("Ready", "3", "4242")
    assert "INFO line 041" in page and "INFO line 099" in page
    assert "INFO line 040" not in page and "INFO line 001" not in page
    # the log is shown as text, never as markup
    assert "ERROR &lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in page
    assert "<script>alert(1)</script>" not in page
    _assert_view_only(admin_client, ServingProcess, process)


def test_it_shows_a_dash_when_the_log_file_is_gone(admin_client, process, tmp_path):
    (tmp_path / "vllm.log").unlink()
    page = _page(admin_client, _url(ServingProcess, "change", process.pk))
    assert re.search(r"<pre[^>]*>-</pre>", page)


def test_it_lists_vllm_processes_with_their_adapter_count(admin_client, process):
    page = _page(admin_client, _url(ServingProcess, "changelist"))
    assert "tiny-llama" in page and "http://127.0.0.1:8199" in page
    assert re.search(r'<td class="field-adapters">2</td>', page)
    assert re.search(r'<td class="field-restarts">3</td>', page)


def test_it_shows_a_route_with_its_split_view_only(admin_client, tiny_adapter_version, user):  # noqa: F811
    v1, v2, v3 = (tiny_adapter_version() for _ in range(3))
    route = Route.objects.create(
        registered_model=v1.registered_model, sticky="header", shadow_version=v3, shadow_percent=15, updated_by=user
    )
    RouteSplit.objects.create(route=route, version=v1, weight=90)
    RouteSplit.objects.create(route=route, version=v2, weight=10)

    page = _page(admin_client, _url(Route, "change", route.pk))

    cells = re.findall(r'<td class="field-(version|weight)">\s*<p>(.*?)</p>', page, flags=re.S)
    assert [(field, _text(value)) for field, value in cells] == [
        ("version", "bot v1"),
        ("weight", "90"),
        ("version", "bot v2"),
        ("weight", "10"),
    ]
    assert 'name="splits-0-weight"' not in page  # inline rows are read-only, no inputs
    assert _readonly(page, "sticky") == "Header" and _readonly(page, "shadow_percent") == "15"
    assert _readonly(page, "shadow_version") == "bot v3"
    listing = _page(admin_client, _url(Route, "changelist"))
    assert '<td class="field-shadow_percent">15</td>' in listing and f"{user.pk}/bot" in listing
    _assert_view_only(admin_client, Route, route)
    assert list(RouteSplit.objects.values_list("weight", flat=True).order_by("weight")) == [10, 90]


def test_it_shows_shadow_records_view_only(admin_client, tiny_adapter_version, user):  # noqa: F811
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    record = ShadowRecord.objects.create(
        owner=user,
        registered_model=v1.registered_model,
        primary_version=v1,
        shadow_version=v2,
        endpoint="chat",
        request={"messages": [{"role": "user", "content": "ping"}]},
        primary_output="pong from v1",
        shadow_output="pong from v2",
        shadow_latency_ms=42.5,
    )
    page = _page(admin_client, _url(ShadowRecord, "change", record.pk))
    assert (_readonly(page, "primary_output"), _readonly(page, "shadow_output")) == ("pong from v1", "pong from v2")
    assert (_readonly(page, "shadow_latency_ms"), _readonly(page, "endpoint")) == ("42.5", "chat")
    listing = _page(admin_client, _url(ShadowRecord, "changelist"))
    assert record.id in listing and "42.5" in listing
    _assert_view_only(admin_client, ShadowRecord, record)


def _traffic_block(page: str) -> dict:
    section = page.split("Live traffic (inference gateway)", 1)[1]
    match = re.search(r"<pre>(.*?)</pre>", section, flags=re.S)
    assert match, section[:2000]
    return json.loads(html.unescape(match.group(1)))


def test_it_shows_live_traffic_on_the_model_version_page(admin_client, tiny_adapter_version):  # noqa: F811
    version = tiny_adapter_version()
    traffic_record(version_id=version.id, latency_ms=120.0, prompt_tokens=11, completion_tokens=30)
    traffic_record(version_id=version.id, latency_ms=80.0, prompt_tokens=9, completion_tokens=0, error=True)
    traffic_record(version_id=version.id, latency_ms=500.0, shadow=True)

    shown = _traffic_block(_page(admin_client, _url(ModelVersion, "change", version.pk)))

    assert isinstance(shown.pop("last_request_at"), int)
    assert shown == {
        "requests": 2,
        "errors": 1,
        "error_rate": 0.5,
        "prompt_tokens": 20,
        "completion_tokens": 30,
        "mean_latency_ms": 100.0,
        "max_latency_ms": 120.0,
        "shadow_requests": 1,
        "shadow_errors": 0,
    }


def test_it_shows_zero_traffic_for_a_version_that_served_nothing(admin_client, tiny_adapter_version):  # noqa: F811
    version = tiny_adapter_version()
    shown = _traffic_block(_page(admin_client, _url(ModelVersion, "change", version.pk)))
    assert (shown["requests"], shown["error_rate"], shown["mean_latency_ms"], shown["last_request_at"]) == (
        0,
        None,
        None,
        None,
    )
