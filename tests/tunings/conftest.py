"""Fixtures for tunings service tests: the platform suite's model dir, training file and job rows in a given state."""

from __future__ import annotations

import pytest

from tests.helpers import record_dispatches
from tests.tuninglab.conftest import fake_base_model, hf_model_dir, make_job, training_file  # noqa: F401


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The user fixtures set passwords; PBKDF2 costs ~0.5 s each on 2 cores and tests never log in with them."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def dispatched(monkeypatch, settings):
    """Record dispatches instead of sending them (``tuninglab.dispatch``) for the test."""
    return record_dispatches(monkeypatch, settings)
