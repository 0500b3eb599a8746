"""Parsing of job objects from every route family, and the progress display with and without tqdm."""

from __future__ import annotations

import builtins
import io

import pytest
from tuninglab_sdk import TuningFailed, TuningJob
from tuninglab_sdk._progress import TextProgress, TqdmProgress, describe, format_eta, make_progress

RUNNING = {
    "object": "fine_tuning.job",
    "id": "ftjob-1",
    "status": "running",
    "model": "tiny-llama",
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    "tuning_method": "qlora",
    "progress": 42.5,
    "loss": 1.23456,
    "current_step": 17,
    "total_steps": 40,
    "eta_seconds": 75.0,
    "error": None,
    "suggestion": None,
}


def test_it_parses_the_resource_and_seed_shapes_of_a_job():
    job = TuningJob.from_dict(RUNNING)
    assert (job.method, job.progress, job.loss, job.eta_seconds) == ("qlora", 42.5, 1.23456, 75.0)
    assert not job.is_terminal and job.error is None

    seed_style = TuningJob.from_dict({**RUNNING, "progress": "42%", "progress_percent": 42.5})
    assert seed_style.progress == 42.5
    assert TuningJob.from_dict({**RUNNING, "progress": "60%"}).progress == 60.0


def test_it_takes_the_suggestion_from_the_job_into_tuning_failed():
    failed = TuningJob.from_dict(
        {
            **RUNNING,
            "status": "failed",
            "error": {"code": "out_of_memory", "message": "OOM", "param": "batch_size"},
            "suggestion": "Lower batch_size.",
        }
    )
    assert failed.is_terminal and failed.error.suggestion == "Lower batch_size."
    exc = TuningFailed(failed)
    assert (exc.code, exc.param, exc.suggestion, exc.job_id) == (
        "out_of_memory",
        "batch_size",
        "Lower batch_size.",
        "ftjob-1",
    )


def test_it_describes_status_loss_step_and_eta():
    assert describe(TuningJob.from_dict(RUNNING)) == "status=running loss=1.2346 step=17/40 eta=01:15"
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "?"


def test_it_falls_back_to_a_text_line_without_tqdm(monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    stream = io.StringIO()
    display = make_progress("ftjob-1", True, stream=stream)
    assert isinstance(display, TextProgress)

    display.update(TuningJob.from_dict(RUNNING))
    display.update(TuningJob.from_dict(RUNNING))  # unchanged: not printed twice
    display.update(
        TuningJob.from_dict({**RUNNING, "progress": 100.0, "status": "succeeded", "fine_tuned_model": "ft:x"})
    )
    display.close()

    lines = stream.getvalue().splitlines()
    assert lines == [
        "ftjob-1  42.5% status=running loss=1.2346 step=17/40 eta=01:15",
        "ftjob-1 100.0% status=succeeded loss=1.2346 step=17/40 model=ft:x",
    ]


def test_it_draws_a_tqdm_bar_when_tqdm_is_installed():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    display = make_progress("ftjob-1", True, stream=stream)
    assert isinstance(display, TqdmProgress)
    display.update(TuningJob.from_dict(RUNNING))
    display.close()
    assert "42.5%" in stream.getvalue() and "loss=1.2346" in stream.getvalue()
