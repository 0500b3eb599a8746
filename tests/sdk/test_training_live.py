"""End to end through the SDK: a local dataset path → a real LoRA run in the embedded
in-process worker → ``wait_for_completion`` returns the succeeded job (or raises on cancel)."""

from __future__ import annotations

import io
import time

import pytest
from tuninglab_sdk import TuningCancelled, TuningLab

from workers import inprocess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

TINY_HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4, "max_seq_len": 64}  # 12 examples → 3 steps


@pytest.fixture
def inprocess_worker(settings):
    """The embedded worker, whatever REDIS_URL says (CI sets it; no Celery worker runs for these tests)."""
    settings.TUNINGLAB_INPROCESS_WORKER = True
    yield inprocess
    inprocess.wait_idle(60)
    inprocess.stop()


def test_it_trains_from_a_local_path_and_waits_for_success(
    live_server, raw_key, base_model, dataset_path, inprocess_worker
):
    with TuningLab(base_url=live_server.url, api_key=raw_key, timeout=30) as client:
        job = client.tunings.create(
            model="tiny-llama",
            data=str(dataset_path),
            method="lora",
            hyperparameters=TINY_HYPERPARAMETERS,
            lora={"rank": 4, "alpha": 8},
            suffix="support",
            seed=11,
        )
        progress_out = io.StringIO()

        done = client.tunings.wait_for_completion(job.id, timeout=240, poll_interval=0.5, progress=progress_out)

        assert done.status == "succeeded" and done.is_terminal
        assert done.fine_tuned_model == f"ft:tiny-llama:alice:support:{job.id}"
        assert done.progress == 100.0
        assert done.total_steps == 3 and done.current_step == 3
        assert done.loss is not None and done.loss > 0
        assert done.error is None
        shown = progress_out.getvalue()
        assert job.id in shown and "status=succeeded" in shown and "100.0%" in shown

        events = list(client.tunings.events(job.id, follow=True, poll_interval=0.2))
        assert any(e.type == "metrics" for e in events)
        assert any(f"succeeded: {done.fine_tuned_model}" in e.message for e in events)
        assert [e.created_at for e in events] == sorted(e.created_at for e in events)  # log order


def test_it_cancels_a_running_job_and_waiting_raises_tuning_cancelled(
    live_server, raw_key, base_model, dataset_path, inprocess_worker, settings
):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "ALLOW_TEST_HOOKS": True}  # step_delay_s below
    slow = {**TINY_HYPERPARAMETERS, "step_delay_s": 2.0}  # the engine's test hook: ~6 s of steps
    with TuningLab(base_url=live_server.url, api_key=raw_key, timeout=30) as client:
        job = client.tunings.create(model="tiny-llama", data=str(dataset_path), hyperparameters=slow)
        deadline = time.monotonic() + 120
        while (job := client.tunings.get(job.id)).status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.status == "running"

        requested = client.tunings.cancel(job.id)
        # A running job stops at the next step boundary: still running, with the flag set.
        assert requested.status in ("running", "cancelled") and requested.raw["cancel_requested"] is True

        with pytest.raises(TuningCancelled) as caught:
            client.tunings.wait_for_completion(job.id, timeout=120, poll_interval=0.3, progress=False)

    assert caught.value.job.status == "cancelled" and caught.value.job.fine_tuned_model is None
