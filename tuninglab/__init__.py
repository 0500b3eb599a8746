"""LLM Tuning Lab Django project."""

from __future__ import annotations

from tuninglab.celery import app as celery_app

__all__ = ["celery_app"]
