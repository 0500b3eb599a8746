"""Registry fixtures: the platform suite's hand-made model dir (registered as "fake-llama") and job rows on it."""

from __future__ import annotations

import pytest

from tests.tuninglab.conftest import fake_base_model, hf_model_dir, training_file  # noqa: F401
from tunings.models import TuningJob


@pytest.fixture
def make_job(db, user, fake_base_model, training_file):  # noqa: F811 - the imported fixtures
    """A job row on "fake-llama", queued unless told otherwise; ``owner`` defaults to ``user``."""

    def make(owner=None, *, status: str = TuningJob.Status.QUEUED, **fields):
        return TuningJob.objects.create(
            owner=owner or user,
            base_model=fake_base_model,
            training_file=training_file,
            status=status,
            resolved_hyperparameters={"max_steps": 3, "batch_size": 2},
            **fields,
        )

    return make
