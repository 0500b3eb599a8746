"""Fixtures for the metrics tests: the worker suite's job rows and scripted fake training child."""

from __future__ import annotations

from tests.workers.conftest import dispatched, fake_base_model, fake_engine, make_job  # noqa: F401
