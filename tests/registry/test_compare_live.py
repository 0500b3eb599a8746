"""``manage.py compare --live``: both sides' live gateway counters as a table, no evaluation when alone."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from registry.management.commands import compare as compare_module
from registry.models import Comparison
from registry.services.traffic import traffic_record
from tuninglab import dispatch
from tuninglab.task_names import RUN_COMPARISON

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sent(monkeypatch):
    """Tasks sent instead of waking a worker; a comparison run in this process fails the test."""
    calls: list[tuple[str, list, str]] = []
    monkeypatch.setattr(dispatch, "send_task", lambda name, *, args, queue: calls.append((name, list(args), queue)))

    def no_run(**kwargs):
        raise AssertionError(f"an evaluation ran: {kwargs}")

    monkeypatch.setattr(compare_module, "comparison_run", no_run)
    return calls


@pytest.fixture
def two(tiny_adapter_version):
    v1, v2 = tiny_adapter_version(), tiny_adapter_version()
    traffic_record(version_id=v1.id, latency_ms=100.0, prompt_tokens=5, completion_tokens=40)
    traffic_record(version_id=v1.id, latency_ms=200.0, prompt_tokens=5, completion_tokens=20, error=True)
    traffic_record(version_id=v1.id, latency_ms=301.0, completion_tokens=11)
    traffic_record(version_id=v1.id, latency_ms=50.0, completion_tokens=99, shadow=True)
    traffic_record(version_id=v2.id, latency_ms=12.5, completion_tokens=7, shadow=True)
    traffic_record(version_id=v2.id, latency_ms=13.5, completion_tokens=8, shadow=True, error=True)
    return v1, v2


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("compare", *args, stdout=out)
    return out.getvalue()


def test_it_prints_both_sides_live_counters_without_evaluating(two, sent):
    text = run("alice", "bot", "--a", "1", "--b", "2", "--live")
    assert text.splitlines() == [
        "Live traffic (inference gateway): A = v1, B = v2",
        "  counter                       A            B",
        "  requests                      3            0",
        "  error rate               33.33%          n/a",
        "  mean latency ms          200.33          n/a",
        "  completion tokens            71            0",
        "  shadow requests               1            2",
    ]
    assert Comparison.objects.count() == 0 and sent == []


def test_it_shows_the_bare_base_as_not_counted(two):
    lines = run("alice", "bot", "--a", "base", "--b", "1", "--live").splitlines()
    assert lines[0] == "Live traffic (inference gateway): A = base (tiny-llama), B = v1"
    assert lines[2] == "  requests                    n/a            3"
    assert lines[6] == "  shadow requests             n/a            1"
    assert Comparison.objects.count() == 0


def test_it_prints_zeros_for_versions_that_served_nothing(tiny_adapter_version):
    tiny_adapter_version(), tiny_adapter_version()
    lines = run("alice", "bot", "--a", "2", "--b", "1", "--live").splitlines()
    assert lines[0] == "Live traffic (inference gateway): A = v2, B = v1"
    assert [line.split()[-2:] for line in lines[2:]] == [
        ["0", "0"],
        ["n/a", "n/a"],
        ["n/a", "n/a"],
        ["0", "0"],
        ["0", "0"],
    ]


def test_it_prints_live_counters_then_queues_the_comparison_with_a_file(
    two, make_dataset, settings, sent, django_capture_on_commit_callbacks
):
    settings.TUNINGLAB_INPROCESS_WORKER = False
    dataset = make_dataset([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])

    with django_capture_on_commit_callbacks(execute=True):
        text = run("alice", "bot", "--a", "1", "--b", "2", "--file", dataset.id, "--live")

    comparison = Comparison.objects.get()
    lines = text.splitlines()
    assert lines[0] == "Live traffic (inference gateway): A = v1, B = v2" and len(lines) == 8
    assert lines[7] == f"Queued comparison {comparison.id} on queue cpu."
    assert (comparison.version_a, comparison.version_b) == two
    assert sent == [(RUN_COMPARISON, [comparison.id], "cpu")]


def test_it_still_needs_a_file_without_live(two):
    with pytest.raises(CommandError) as info:
        run("alice", "bot", "--a", "1", "--b", "2")
    assert str(info.value) == "the following arguments are required: --file (or --live for live traffic only)"
    assert Comparison.objects.count() == 0


def test_it_refuses_unknown_versions_and_two_base_sides_with_live(two):
    with pytest.raises(CommandError, match=r"^\[version_not_found\] No version 9 of model bot\.$"):
        run("alice", "bot", "--a", "1", "--b", "9", "--live")
    with pytest.raises(CommandError, match=r"^\[same_sides\]"):
        run("alice", "bot", "--a", "base", "--b", "base", "--live")


def test_it_shows_only_the_owners_versions(two, other_user):
    with pytest.raises(CommandError, match=r"\[version_not_found\]"):
        run("mallory", "bot", "--a", "1", "--b", "2", "--live")
