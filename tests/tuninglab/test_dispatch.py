"""Sending a wake-up to the broker."""

from __future__ import annotations

from tuninglab import dispatch
from tuninglab.task_names import RUN_TUNING_JOB


def test_it_sends_wakeups_without_a_result_a_down_redis_would_make_it_wait_for(settings, monkeypatch):
    settings.TUNINGLAB_INPROCESS_WORKER = False
    sent = []
    monkeypatch.setattr(dispatch.app, "send_task", lambda name, **kwargs: sent.append((name, kwargs)))
    dispatch.dispatch_tuning_job("ftjob-abc", queue="gpu")
    # With a result, the first send while Redis is down also retries the result backend (~20 s).
    assert sent == [(RUN_TUNING_JOB, {"args": ["ftjob-abc"], "queue": "gpu", "ignore_result": True})]
