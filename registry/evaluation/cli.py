"""Shared parts of ``manage.py evaluate`` and ``manage.py compare``: owner lookup and printing."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from registry.evaluation.report import METRIC_LABELS

# Metrics printed for an evaluation, in this order (counts last).
PRINTED_METRICS = ("exact_match", "rouge_l", "bleu", "chrf", "judge", "loss", "perplexity")


def owner_get(username: str) -> Any:
    """The user named ``username``, or a CommandError."""
    owner = get_user_model().objects.filter(username=username).first()
    if owner is None:
        raise CommandError(f"[owner_not_found] No user {username!r}.")
    return owner


def metric_lines(metrics: dict[str, Any]) -> list[str]:
    """``label  value`` lines for an evaluation's metrics, failures included."""
    failed = metrics.get("failed", {})
    lines = [f"  {'examples':<16} {metrics.get('examples')} (of {metrics.get('file_examples')} in the file)"]
    for key in PRINTED_METRICS:
        if key in failed:
            lines.append(f"  {METRIC_LABELS[key]:<16} failed: [{failed[key]['code']}] {failed[key]['message']}")
        elif metrics.get(key) is not None:
            lines.append(f"  {METRIC_LABELS[key]:<16} {metrics[key]:.4f}")
    lines.append(f"  {'seconds':<16} {metrics.get('seconds')}")
    return lines
