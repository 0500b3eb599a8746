"""Fixtures for the browser tests: the worker suite's job rows and scripted training child."""

from __future__ import annotations

from tests.workers.conftest import dispatched, fake_base_model, fake_engine, make_job  # noqa: F401
