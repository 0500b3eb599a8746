"""Shared printing of ``manage.py evaluate`` and ``manage.py compare``."""

from __future__ import annotations

from typing import Any

from registry.evaluation.report import METRIC_LABELS

# Metrics printed for an evaluation, in this order (counts last).
PRINTED_METRICS = ("exact_match", "rouge_l", "bleu", "chrf", "judge", "loss", "perplexity")


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
