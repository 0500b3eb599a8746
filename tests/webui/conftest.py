"""Fixtures for the web pages: logged-in clients, job rows with metrics events, model versions."""

from __future__ import annotations

import itertools

import pytest

from registry.services.versions import model_version_create_from_job
from tests.registry.conftest import write_peft_adapter
from tests.tuninglab.conftest import fake_base_model, hf_model_dir, training_file  # noqa: F401
from tunings.models import TuningJob
from tunings.services.jobs import job_metrics_events_add


@pytest.fixture
def alice_client(client, user):
    """The test client, logged in as ``user`` (alice)."""
    client.force_login(user)
    return client


@pytest.fixture
def make_job(db, user, fake_base_model, training_file):  # noqa: F811 - the imported fixtures
    """``make_job(owner=None, status="queued", **fields)``: a job row on "fake-llama"."""

    def make(owner=None, *, status: str = TuningJob.Status.QUEUED, **fields):
        fields.setdefault("resolved_hyperparameters", {"max_steps": 10, "batch_size": 2, "learning_rate": 2e-4})
        fields.setdefault("hyperparameters", {"n_epochs": "auto"})
        return TuningJob.objects.create(
            owner=owner or user, base_model=fake_base_model, training_file=training_file, status=status, **fields
        )

    return make


def metrics_sample(step: int, *, total: int = 10, loss=None, eval_loss=None, lr=None) -> tuple[str, dict]:
    """One metrics event as ``workers.relay`` writes it: the engine's line without ``type``."""
    data = {
        "step": step,
        "total_steps": total,
        "epoch": step / total,
        "loss": loss,
        "lr": lr,
        "grad_norm": 0.5,
        "tokens_per_s": 100.0,
        "trained_tokens": step * 64,
        "progress": 100.0 * step / total,
        "eta_s": float(total - step),
        "eval_loss": eval_loss,
    }
    return f"Step {step}/{total}: training loss={loss}", data


@pytest.fixture
def add_metrics():
    """``add_metrics(job, steps, eval_every=0)``: metrics events for ``steps`` (loss 2/step, lr 1e-4 ...)."""

    def add(job, steps, *, eval_every: int = 0, total: int = 10) -> None:
        samples = [
            metrics_sample(
                step,
                total=total,
                loss=2.0 / step,
                lr=1e-4 * (1 - step / (total + 1)),
                eval_loss=(2.5 / step) if eval_every and step % eval_every == 0 else None,
            )
            for step in steps
        ]
        job_metrics_events_add(job_id=job.id, samples=samples)

    return add


@pytest.fixture
def make_version(db, user, fake_base_model, training_file, hf_model_dir, tmp_path):  # noqa: F811
    """``make_version(owner=None, model_name="bot", final_loss=1.25)``: a succeeded job and its servable
    version on "fake-llama" (v1, v2, ... per owner and name)."""
    counter = itertools.count()

    def make(owner=None, *, model_name: str = "bot", final_loss: float = 1.25, **metrics):
        job = TuningJob.objects.create(
            owner=owner or user,
            base_model=fake_base_model,
            training_file=training_file,
            status=TuningJob.Status.SUCCEEDED,
            model_name=model_name,
            lora_rank=4,
            target_modules=["q_proj"],
            resolved_hyperparameters={"max_steps": 3, "batch_size": 2},
        )
        adapter = write_peft_adapter(tmp_path / f"adapter-{next(counter)}", hf_model_dir, rank=4, modules=("q_proj",))
        return model_version_create_from_job(
            job=job, adapter_dir=adapter, metrics={"final_loss": final_loss, **metrics}
        )

    return make
