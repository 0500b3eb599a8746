"""``manage.py compare OWNER NAME --a VERSION|base --b VERSION|base (--file FILE_ID | --live) [--wait] [--markdown]``.

Queues an A/B comparison of two versions of OWNER's model NAME (``base``: the bare base model
of the other side) on the processed file FILE_ID. ``--wait`` (and the embedded mode, see
``manage.py evaluate``) runs it in this process and prints the per-metric table and
win/tie/loss of B against A; ``--markdown`` prints it as Markdown.

``--live`` prints what the inference gateway counted for both sides so far (requests, error
rate, mean latency, completion tokens, shadow requests); alone (no ``--file``) it runs no
evaluation. The bare base model has no counters: the gateway counts versions only.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry.evaluation.report import METRIC_LABELS, comparison_markdown
from registry.evaluation.runner import comparison_run
from registry.management.command_helpers import owner_by_username
from registry.models import RunStatus
from registry.selectors import evaluation_dataset_get, model_version_get
from registry.services.evaluations import comparison_create
from registry.services.traffic import traffic_summary
from tuninglab.command_progress import activity, add_progress_arguments
from tuninglab.errors import ApiError

BASE = "base"


def _side(value: str) -> int | str:
    if value == BASE:
        return BASE
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"a side is a version number or 'base', not {value!r}") from None


def _count(value: Any) -> str:
    return str(value)


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# (label, traffic_summary key, format) per row of the --live table.
LIVE_ROWS = [
    ("requests", "requests", _count),
    ("error rate", "error_rate", _percent),
    ("mean latency ms", "mean_latency_ms", _ms),
    ("completion tokens", "completion_tokens", _count),
    ("shadow requests", "shadow_requests", _count),
]


class Command(BaseCommand):
    help = "A/B-compare two versions of a model (or a version and its base model) on an uploaded file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("owner", help="Username of the model's owner.")
        parser.add_argument("name", help="Registered model name.")
        parser.add_argument("--a", required=True, type=_side, help="Side A: a version number or 'base'.")
        parser.add_argument("--b", required=True, type=_side, help="Side B: a version number or 'base'.")
        # Required unless --live is given alone (checked in handle: argparse cannot say "unless").
        parser.add_argument("--file", dest="file_id", help="Id of a processed file of the owner.")
        parser.add_argument("--max-examples", type=int, default=None, help="Compare on the first N examples.")
        parser.add_argument("--max-new-tokens", type=int, default=None, help="Longest generated answer (tokens).")
        parser.add_argument("--queue", default="cpu", help="Worker queue: cpu or gpu.")
        parser.add_argument("--wait", action="store_true", help="Run it here and print the result.")
        parser.add_argument("--markdown", action="store_true", help="Print the result as Markdown.")
        parser.add_argument(
            "--live",
            action="store_true",
            help="Print both sides' live traffic counters from the inference gateway (alone: no evaluation).",
        )
        add_progress_arguments(parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        if not opts["file_id"] and not opts["live"]:
            raise CommandError("the following arguments are required: --file (or --live for live traffic only)")
        owner = owner_by_username(opts["owner"])
        options = {k: opts[k] for k in ("max_examples", "max_new_tokens") if opts[k] is not None}
        run_here = opts["wait"] or settings.TUNINGLAB_INPROCESS_WORKER
        if opts["a"] == BASE and opts["b"] == BASE:
            raise CommandError("[same_sides] A and B are both the base model")
        try:
            versions = {
                side: None
                if opts[side] == BASE
                else model_version_get(owner=owner, name=opts["name"], version=opts[side], param=side)
                for side in ("a", "b")
            }
        except ApiError as exc:
            raise CommandError(f"[{exc.code}] {exc.message}") from exc
        base_model = next(v for v in versions.values() if v is not None).base_model
        if opts["live"]:
            self._print_live(versions, base_model.name)
            if not opts["file_id"]:
                return
        try:
            comparison = comparison_create(
                owner=owner,
                version_a=versions["a"],
                version_b=versions["b"],
                base_model=base_model,
                dataset=evaluation_dataset_get(owner=owner, file_id=opts["file_id"]),
                options=options,
                queue=opts["queue"],
                dispatch=not run_here,
            )
        except ApiError as exc:
            raise CommandError(f"[{exc.code}] {exc.message}") from exc
        if not run_here:
            self.stdout.write(f"Queued comparison {comparison.id} on queue {opts['queue']}.")
            return
        if not opts["wait"]:
            self.stdout.write("No broker (embedded mode): running the comparison in this process.")
        # The comparison reports no per-example progress: show that it is alive and for how long.
        with activity(f"comparing {opts['name']}", force=opts["progress"], stream=self.stderr):
            comparison = comparison_run(comparison_id=comparison.id) or comparison
        comparison.refresh_from_db()
        if opts["markdown"]:
            self.stdout.write(comparison_markdown(comparison))
        if comparison.status != RunStatus.SUCCEEDED:
            error = comparison.error or {}
            raise CommandError(f"[{error.get('code')}] {error.get('message')}")
        if not opts["markdown"]:
            self._print_table(comparison)

    def _print_table(self, comparison: Any) -> None:
        self.stdout.write(
            f"Comparison {comparison.id}: B = {self._label(comparison, 'b')}, A = {self._label(comparison, 'a')}"
        )
        self.stdout.write(f"  {'metric':<16} {'A':>10} {'B':>10} {'B - A':>10}")
        for row in comparison.table:
            cells = ["failed" if s in row.get("failed", {}) else _fmt(row[s]) for s in ("a", "b")]
            self.stdout.write(
                f"  {METRIC_LABELS.get(row['metric'], row['metric']):<16} {cells[0]:>10} {cells[1]:>10} "
                f"{_fmt(row['delta']):>10}"
            )
        o = comparison.outcomes
        self.stdout.write(f"B against A per example: {o['wins']} wins, {o['ties']} ties, {o['losses']} losses")

    def _print_live(self, versions: dict[str, Any], base_name: str) -> None:
        """Both sides' live counters as one table (the bare base: n/a, the gateway counts versions)."""
        labels = {s: f"base ({base_name})" if v is None else f"v{v.version}" for s, v in versions.items()}
        summaries = {s: traffic_summary(v) if v is not None else None for s, v in versions.items()}
        self.stdout.write(f"Live traffic (inference gateway): A = {labels['a']}, B = {labels['b']}")
        self.stdout.write(f"  {'counter':<18} {'A':>12} {'B':>12}")
        for label, key, fmt in LIVE_ROWS:
            cells = ["n/a" if summaries[s] is None else fmt(summaries[s][key]) for s in ("a", "b")]
            self.stdout.write(f"  {label:<18} {cells[0]:>12} {cells[1]:>12}")

    @staticmethod
    def _label(comparison: Any, side: str) -> str:
        version = getattr(comparison, f"version_{side}")
        return f"base ({comparison.base_model.name})" if version is None else f"v{version.version}"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
