"""Progress bars of the long CLI tasks: ``manage.py demo`` (training steps), ``cleanup``,
``evaluate`` / ``compare`` (elapsed time: their services report no progress), and the SDK's
``wait_for_completion(progress=...)``.

Bars go to stderr, only on a terminal unless forced (``--progress``); the tests force them on
a captured stream and read what was drawn.
"""

from __future__ import annotations

import inspect
import io
import threading

import httpx
import pytest
from django.core.management import CommandError, call_command, load_command_class
from django.db import connections
from tuninglab_sdk import TuningLab
from tuninglab_sdk.resources.tunings import AsyncTunings, Tunings

from registry.models import ModelVersion, RegisteredModel
from tests.workers.conftest import make_training_file
from tuninglab.command_progress import bar
from tunings.models import TuningJob
from workers.management.commands.demo import Command as DemoCommand
from workers.runner import run_job

APP_OF = {"evaluate": "registry", "compare": "registry", "cleanup": "tunings", "demo": "workers"}


def start_runner(job_id: str) -> threading.Thread:
    def target() -> None:
        try:
            run_job(job_id, worker_id="w1", queue="cpu")
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.mark.django_db
def test_the_demo_bar_shows_step_total_loss_and_the_workers_eta(make_job, user):
    job = make_job(
        user, status=TuningJob.Status.RUNNING, current_step=7, total_steps=40, current_loss=1.25, eta_seconds=70.0
    )
    err = io.StringIO()
    command = DemoCommand(stdout=io.StringIO(), stderr=err)
    steps = bar(total=None, desc="training", force=True, stream=command.stderr, unit="step")

    command._report(job, steps)

    assert "training:  18%" in err.getvalue() and "7/40 [" in err.getvalue()
    assert "loss=1.2500 eta=70s" in err.getvalue()


@pytest.mark.django_db
def test_without_a_terminal_the_demo_prints_a_step_line_instead(make_job, user):
    job = make_job(
        user, status=TuningJob.Status.RUNNING, current_step=7, total_steps=40, current_loss=1.25, eta_seconds=70.0,
        progress=17.5,
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()  # not TTYs
    command = DemoCommand(stdout=out, stderr=err)

    command._report(job, bar(total=None, desc="training", force=None, stream=command.stderr))

    assert err.getvalue() == ""
    assert out.getvalue() == "  step   7/40  loss 1.2500   17.5%  eta 70s\n"


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("force", [True, None])
def test_the_demo_follows_a_training_job_to_its_end(fake_engine, make_job, user, settings, force):
    settings.TUNINGLAB = {**settings.TUNINGLAB, "PROGRESS_WRITE_SECONDS": 0.05}
    # The fake's done line reports 3 steps: train 3, so the last poll reads 3/3.
    fake_engine([{"train": {"steps": 3, "delay": 0.3}}, {"adapter": True}, {"done": True}])
    job = make_job(user)
    out, err = io.StringIO(), io.StringIO()
    thread = start_runner(job.id)

    finished = DemoCommand(stdout=out, stderr=err)._follow(job.id, timeout=90, progress=force)
    thread.join(timeout=60)

    assert finished.status == TuningJob.Status.SUCCEEDED
    if force:
        assert "3/3 [" in err.getvalue() and "succeeded" in err.getvalue()
        assert "[succeeded]" not in out.getvalue()  # the bar replaces the status lines
    else:
        assert err.getvalue() == "" and out.getvalue().endswith("  [succeeded]\n")


@pytest.mark.django_db
def test_cleanup_shows_its_elapsed_time_on_stderr_only_when_forced():
    out, err = io.StringIO(), io.StringIO()
    call_command("cleanup", "--dry-run", "--progress", stdout=out, stderr=err)
    assert "cleanup: 00:00 elapsed" in err.getvalue()
    assert "would delete: 0 paths" in out.getvalue()  # the report stays on stdout

    quiet = io.StringIO()
    call_command("cleanup", "--dry-run", stdout=io.StringIO(), stderr=quiet)  # not a TTY
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("name", ["evaluate", "compare", "cleanup", "demo"])
def test_each_long_command_takes_progress_and_no_progress(name):
    parser = load_command_class(APP_OF[name], name).create_parser("manage.py", name)
    required = {
        "evaluate": ["alice", "bot", "1", "--file", "file-x"],
        "compare": ["alice", "bot", "--a", "1", "--b", "2"],
    }
    args = required.get(name, [])
    assert parser.parse_args(args).progress is None  # a terminal decides
    assert parser.parse_args([*args, "--progress"]).progress is True
    assert parser.parse_args([*args, "--no-progress"]).progress is False


def test_the_sdks_wait_draws_step_total_loss_and_eta_by_default():
    assert inspect.signature(Tunings.wait_for_completion).parameters["progress"].default is True
    assert inspect.signature(AsyncTunings.wait_for_completion).parameters["progress"].default is True

    job = {"object": "fine_tuning.job", "id": "ftjob-abc", "model": "tiny-llama"}
    steps = {"total_steps": 10, "fine_tuned_model": "ft:tiny-llama:alice::ftjob-abc"}
    answers = [
        {**job, **steps, "status": "running", "progress": 30.0, "current_step": 3, "loss": 1.25, "eta_seconds": 70},
        {**job, **steps, "status": "succeeded", "progress": 100.0, "current_step": 10, "loss": 0.5},
    ]
    client = TuningLab(
        base_url="http://tl.test",
        api_key="tl-test",
        http_client=httpx.Client(
            transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answers.pop(0)))
        ),
    )
    client._poll_sleep = lambda seconds: None
    stream = io.StringIO()

    done = client.tunings.wait_for_completion("ftjob-abc", progress=stream)

    assert done.status == "succeeded"
    drawn = stream.getvalue()
    assert "step=3/10" in drawn and "loss=1.2500" in drawn and "eta=01:10" in drawn
    assert "step=10/10" in drawn


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["evaluate", "compare"])
def test_evaluate_and_compare_show_their_elapsed_time_while_they_run_here(name, user, fake_base_model, settings):
    model = RegisteredModel.objects.create(owner=user, name="bot")
    for n in (1, 2):
        ModelVersion.objects.create(
            registered_model=model, owner=user, version=n, base_model=fake_base_model, adapter_path=f"v{n}"
        )
    training_file = make_training_file(user, settings)
    args = {"evaluate": ["1"], "compare": ["--a", "1", "--b", "2"]}[name]
    err = io.StringIO()

    # The fake base model cannot be loaded: the run fails, after the indicator was drawn.
    with pytest.raises(CommandError):
        call_command(
            name, "alice", "bot", *args, "--file", training_file.id, "--wait", "--progress",
            stdout=io.StringIO(), stderr=err,
        )  # fmt: skip

    label = {"evaluate": "evaluating bot v1", "compare": "comparing bot"}[name]
    assert f"{label}: 00:0" in err.getvalue() and "elapsed" in err.getvalue()
