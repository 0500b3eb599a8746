"""Fixtures for the metrics tests: the worker suite's job rows and scripted fake training child,
and the integration suite's real ``celery worker`` processes (PostgreSQL + Redis)."""

from __future__ import annotations

from tests.integration.conftest import live_stack, start_worker  # noqa: F401
from tests.workers.conftest import dispatched, fake_base_model, fake_engine, make_job  # noqa: F401
