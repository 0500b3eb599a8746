"""A/B comparison results: the per-metric table, per-example win/tie/loss, and their Markdown.

Pure functions over stored JSON (no torch, no metric libraries): the web process renders
``comparison_markdown`` for the API and admin.

- Table rows ``{"metric", "a", "b", "delta", "higher_is_better"}`` with ``delta = b - a``
  (None when a side lacks the metric), in ``TABLE_METRICS`` order.
- Outcome of B against A on one example: exact match decides first (B matches and A does not →
  ``win``, the reverse → ``loss``); when both or neither match, the higher per-example ROUGE-L
  F1 wins, and equal ROUGE-L (within ``TIE_EPSILON``) is a ``tie``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# (metric, higher is better) in table order; "judge" appears only when both sides have it.
TABLE_METRICS = (
    ("exact_match", True),
    ("rouge_l", True),
    ("bleu", True),
    ("chrf", True),
    ("judge", True),
    ("loss", False),
    ("perplexity", False),
)
METRIC_LABELS = {
    "exact_match": "exact match",
    "rouge_l": "ROUGE-L F1",
    "bleu": "BLEU",
    "chrf": "chrF",
    "judge": "judge (1-5)",
    "loss": "reference loss",
    "perplexity": "perplexity",
}
TIE_EPSILON = 1e-9
OUTCOMES = ("win", "tie", "loss")


def comparison_table(metrics_a: dict[str, Any], metrics_b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric either side has or failed (``judge`` only when it was asked for).

    A metric that failed on a side (the judge) has that side's value None and
    ``"failed": {"a"|"b": {code, message}}`` in its row.
    """
    rows = []
    for metric, higher in TABLE_METRICS:
        a, b = metrics_a.get(metric), metrics_b.get(metric)
        failed = {
            side: m["failed"][metric]
            for side, m in (("a", metrics_a), ("b", metrics_b))
            if metric in m.get("failed", {})
        }
        if a is None and b is None and not failed:
            continue
        delta = b - a if a is not None and b is not None else None
        row = {"metric": metric, "a": a, "b": b, "delta": delta, "higher_is_better": higher}
        if failed:
            row["failed"] = failed
        rows.append(row)
    return rows


def example_outcome(scores_a: dict[str, float], scores_b: dict[str, float]) -> str:
    """``win`` / ``tie`` / ``loss`` of B against A on one example (see the module docstring)."""
    if scores_b["exact_match"] != scores_a["exact_match"]:
        return "win" if scores_b["exact_match"] > scores_a["exact_match"] else "loss"
    diff = scores_b["rouge_l"] - scores_a["rouge_l"]
    if abs(diff) <= TIE_EPSILON:
        return "tie"
    return "win" if diff > 0 else "loss"


def outcome_counts(outcomes: Sequence[str]) -> dict[str, int]:
    """``{"wins", "ties", "losses"}`` of B against A."""
    return {"wins": outcomes.count("win"), "ties": outcomes.count("tie"), "losses": outcomes.count("loss")}


def side_label(version: Any, base_model: Any) -> str:
    """``"<name> v<N>"`` for a version, ``"base (<base name>)"`` for the bare base model."""
    if version is None:
        return f"base ({base_model.name})"
    return f"{version.registered_model.name} v{version.version}"


def _number(value: Any, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if metric in ("exact_match", "rouge_l", "loss") else f"{value:.2f}"


def _signed(value: Any, metric: str) -> str:
    return "n/a" if value is None else ("+" if value > 0 else "") + _number(value, metric)


def _cell(text: Any, limit: int = 80) -> str:
    """One Markdown table cell: one line, pipes escaped, shortened."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def comparison_markdown(comparison: Any, *, max_examples: int = 10) -> str:
    """The comparison as Markdown: header, metric table, win/tie/loss line, first examples."""
    label_a = side_label(comparison.version_a, comparison.base_model)
    label_b = side_label(comparison.version_b, comparison.base_model)
    dataset = comparison.dataset
    lines = [
        f"## A/B comparison: {label_b} (B) vs {label_a} (A)",
        "",
        f"Dataset: `{dataset.filename}` ({dataset.id}). Comparison {comparison.id}: {comparison.status}.",
    ]
    if comparison.status != "succeeded":
        if comparison.error:
            lines += ["", f"Error: [{comparison.error.get('code')}] {comparison.error.get('message')}"]
        return "\n".join(lines) + "\n"
    counts = comparison.outcomes or {}
    total = sum(counts.get(k, 0) for k in ("wins", "ties", "losses"))
    lines += [
        "",
        f"| metric | A: {_cell(label_a)} | B: {_cell(label_b)} | Δ (B - A) |",
        "|---|---:|---:|---:|",
    ]
    for row in comparison.table:
        arrow = "↑" if row.get("higher_is_better", True) else "↓"
        metric = row["metric"]
        a, b = ("failed" if side in row.get("failed", {}) else _number(row[side], metric) for side in ("a", "b"))
        lines.append(f"| {METRIC_LABELS.get(metric, metric)} {arrow} | {a} | {b} | {_signed(row['delta'], metric)} |")
    lines += [
        "",
        f"Per example, B against A (exact match first, then ROUGE-L), {total} examples: "
        f"**{counts.get('wins', 0)} wins, {counts.get('ties', 0)} ties, {counts.get('losses', 0)} losses**.",
    ]
    shown = comparison.examples[:max_examples]
    if shown:
        lines += [
            "",
            f"### Examples (first {len(shown)})",
            "",
            "| # | prompt | reference | A | B | B vs A |",
            "|---:|---|---|---|---|---|",
        ]
        for ex in shown:
            prompt = ex["prompt"][-1]["content"] if ex.get("prompt") else ""
            lines.append(
                f"| {ex['index'] + 1} | {_cell(prompt, 60)} | {_cell(ex['reference'], 60)} | "
                f"{_cell(ex['a']['prediction'], 60)} | {_cell(ex['b']['prediction'], 60)} | {ex['outcome']} |"
            )
    return "\n".join(lines) + "\n"
