"""Fixtures for tunings service tests: the platform suite's model dir, training file and job rows in a given state."""

from __future__ import annotations

from tests.tuninglab.conftest import fake_base_model, hf_model_dir, make_job, training_file  # noqa: F401
