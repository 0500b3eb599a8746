"""Read-only admin for evaluations and comparisons (with the comparison's Markdown report)."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from registry.admin.html import change_link, json_block, side
from registry.evaluation.report import comparison_markdown
from registry.models import Comparison, Evaluation
from tuninglab.admin_base import ReadOnlyModelAdmin

# Per-example rows shown on an evaluation page (a run over a large file stores thousands).
EXAMPLES_SHOWN = 50


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "owner", "target_display", "base_model", "dataset", "status", "created_at", "finished_at"]
    list_filter = ["status", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["id", "owner__username", "version__registered_model__name", "dataset__id"]
    list_select_related = ["owner", "version__registered_model", "base_model", "dataset"]
    fields = [
        "id",
        "owner",
        "target_display",
        "base_model",
        "dataset",
        "status",
        "options_display",
        "metrics_display",
        "error_display",
        "examples_display",
        "created_at",
        "started_at",
        "finished_at",
    ]

    @admin.display(description="evaluated")
    def target_display(self, obj: Evaluation) -> str:
        if obj.version is None:
            return f"{obj.base_model.name} (base model)"
        return change_link(obj.version, f"{obj.version.registered_model.name} v{obj.version.version}")

    @admin.display(description="options")
    def options_display(self, obj: Evaluation) -> str:
        return json_block(obj.options)

    @admin.display(description="metrics")
    def metrics_display(self, obj: Evaluation) -> str:
        return json_block(obj.metrics)

    @admin.display(description="error")
    def error_display(self, obj: Evaluation) -> str:
        return json_block(obj.error)

    @admin.display(description=f"examples (first {EXAMPLES_SHOWN})")
    def examples_display(self, obj: Evaluation) -> str:
        return json_block((obj.examples or [])[:EXAMPLES_SHOWN])


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "owner", "model_display", "side_a", "side_b", "status", "outcomes_display", "created_at"]
    list_filter = ["status", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["id", "owner__username", "version_a__registered_model__name", "version_b__registered_model__name"]
    list_select_related = [
        "owner",
        "version_a__registered_model",
        "version_b__registered_model",
        "base_model",
        "dataset",
    ]
    fields = [
        "id",
        "owner",
        "model_display",
        "side_a",
        "side_b",
        "base_model",
        "dataset",
        "status",
        "outcomes_display",
        "table_display",
        "report_display",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    ]

    @admin.display(description="model")
    def model_display(self, obj: Comparison) -> str:
        named = obj.version_a or obj.version_b
        return named.registered_model.name if named is not None else obj.base_model.name

    @admin.display(description="A")
    def side_a(self, obj: Comparison) -> str:
        return side(obj.version_a)

    @admin.display(description="B")
    def side_b(self, obj: Comparison) -> str:
        return side(obj.version_b)

    @admin.display(description="B against A (win/tie/loss)")
    def outcomes_display(self, obj: Comparison) -> str:
        o = obj.outcomes or {}
        if not o:
            return "-"
        return f"{o.get('wins', 0)} / {o.get('ties', 0)} / {o.get('losses', 0)}"

    @admin.display(description="metrics")
    def table_display(self, obj: Comparison) -> str:
        rows = [(r.get("metric", ""), r.get("a", ""), r.get("b", ""), r.get("delta", "")) for r in obj.table or []]
        if not rows:
            return "-"
        return format_html(
            "<table><thead><tr><th>metric</th><th>A</th><th>B</th><th>delta (B - A)</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="report (Markdown)")
    def report_display(self, obj: Comparison) -> str:
        return format_html("<pre>{}</pre>", comparison_markdown(obj))
