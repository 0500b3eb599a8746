"""Admin for the registry: register base models (validated by the same service as the
``register_base_model`` command), and read-only views of registered models, versions (with
their lineage), aliases and their history, evaluations and comparisons.

Versions are created by finished jobs (with their adapter files), and every alias move must
pass the serving check and leave an ``AliasEvent``; an edit by hand would skip all of that, so
those pages are view-only. Alias moves are admin actions with a confirmation page that call
the services the API and ``manage.py promote`` / ``rollback`` call: "Promote to an alias…" on
versions, "Roll back…" on aliases. They need ``registry.change_alias``.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from registry.evaluation.report import comparison_markdown
from registry.models import Alias, AliasEvent, BaseModel, Comparison, Evaluation, ModelVersion, RegisteredModel
from registry.selectors import model_version_list, version_alias_event_list
from registry.services.aliases import model_promote, model_rollback
from registry.services.base_models import (
    BaseModelError,
    base_model_inspect,
    base_model_name_validate,
    base_model_register,
)
from tuninglab.admin_base import ReadOnlyInline, ReadOnlyModelAdmin
from tuninglab.errors import ApiError

# Per-example rows shown on an evaluation page (a run over a large file stores thousands).
EXAMPLES_SHOWN = 50


class BaseModelForm(forms.ModelForm):
    """Name, path, description; ``clean`` runs the service's checks so errors show on the form."""

    class Meta:
        model = BaseModel
        fields = ["name", "path", "description"]
        help_texts = {
            "name": "Lowercase letters, digits, '.', '_' or '-' (e.g. llama-3.1-8b).",
            "path": "Absolute path of a local Hugging Face model directory on the worker hosts "
            "(config.json, tokenizer, *.safetensors).",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        name = data.get("name") if "name" in self.fields else self.instance.name
        path = data.get("path")
        try:
            if name is not None:
                base_model_name_validate(name)
            if path:
                info = base_model_inspect(path=path)
                data["path"] = str(info.path)
        except BaseModelError as exc:
            field = exc.param if exc.param in self.fields else None
            self.add_error(field, f"{exc.message} {exc.suggestion or ''}".strip())
        return data


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    form = BaseModelForm
    list_display = ["name", "architecture", "parameters_display", "path", "created_at"]
    search_fields = ["name", "architecture", "path"]
    readonly_fields = ["architecture", "parameter_count", "created_at"]

    @admin.display(description="parameters", ordering="parameter_count")
    def parameters_display(self, obj: BaseModel) -> str:
        n = obj.parameter_count
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.1f}{unit}"
        return str(n)

    def get_readonly_fields(self, request: HttpRequest, obj: BaseModel | None = None) -> list[str]:
        # Renaming would orphan every reference by name (API requests, configs): re-register instead.
        return self.readonly_fields + (["name"] if obj is not None else [])

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: BaseModel, form: Any, change: bool) -> None:
        data = form.cleaned_data
        try:
            row = base_model_register(name=obj.name, path=data["path"], description=data.get("description", "") or "")
        except ApiError as exc:
            # The form already ran the same checks; this is a race (files moved, or jobs
            # started using the name). Django admin cannot turn save_model errors into form
            # errors, so fail loudly rather than pretend it saved.
            raise forms.ValidationError(exc.message) from exc
        obj.pk = row.pk
        obj.path, obj.architecture, obj.parameter_count = row.path, row.architecture, row.parameter_count
        obj.description, obj.created_at = row.description, row.created_at
        obj._state.adding = False


def _json_block(value: Any) -> str:
    """A JSON value as a readable, escaped ``<pre>`` block ("-" when empty)."""
    if not value:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def _side(version: ModelVersion | None) -> str:
    return f"v{version.version}" if version is not None else "base"


def _change_link(obj: Any, text: str) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text)


def _history_table(events: list[AliasEvent]) -> str:
    """Alias moves as a table: when, alias, kind, from, to, who, why."""
    if not events:
        return "No alias moves."
    rows = [
        (
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _change_link(e.alias, e.alias.alias),
            e.kind,
            _side(e.from_version) if e.from_version_id else "-",
            _side(e.to_version),
            e.actor.get_username() if e.actor_id else "-",
            e.reason or "",
        )
        for e in events
    ]
    return format_html(
        "<table><thead><tr><th>when</th><th>alias</th><th>kind</th><th>from</th><th>to</th><th>actor</th>"
        "<th>reason</th></tr></thead><tbody>{}</tbody></table>",
        format_html_join("", "<tr>" + "<td>{}</td>" * 7 + "</tr>", rows),
    )


class AliasMoveForm(forms.Form):
    alias = forms.CharField(
        initial="production", max_length=64, help_text="production, staging or your own name (created if new)."
    )
    reason = forms.CharField(required=False, max_length=1000, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


class RollbackForm(forms.Form):
    to_version = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Empty: the version each alias held before its last move (again walks further back).",
    )
    reason = forms.CharField(required=False, max_length=1000, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


class AliasMoveAdmin(ReadOnlyModelAdmin):
    """Shared by the pages whose actions move aliases: who may, and how an action page is built."""

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Who may promote and roll back: holders of ``registry.change_alias``."""
        return request.user.has_perm("registry.change_alias")

    def _action_page(self, request: HttpRequest, template: str, action: str, **context: Any) -> TemplateResponse:
        return TemplateResponse(
            request,
            template,
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "action": action,
                **context,
            },
        )

    def _refused(self, request: HttpRequest, label: str, exc: ApiError) -> None:
        # A refused serving check lists every reason in its message; nothing was changed.
        self.message_user(request, f"{label}: not moved ({exc.code}): {exc.message}", messages.ERROR)

    def _moved(self, request: HttpRequest, label: str, alias: Alias, event: AliasEvent | None) -> None:
        if event is None:
            self.message_user(request, f"{label}: already at v{alias.version.version}; nothing moved.", messages.INFO)
            return
        before = f"v{event.from_version.version}" if event.from_version_id else "nothing"
        self.message_user(request, f"{label}: {event.kind} {before} → v{event.to_version.version}.", messages.SUCCESS)


class VersionEvaluationInline(ReadOnlyInline):
    model = Evaluation
    fk_name = "version"
    fields = ["evaluation_link", "status", "dataset", "metrics", "created_at", "finished_at"]
    verbose_name_plural = "evaluations"

    @admin.display(description="evaluation")
    def evaluation_link(self, obj: Evaluation) -> str:
        return _change_link(obj, obj.id)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("dataset").order_by("-created_at", "-id")


@admin.register(ModelVersion)
class ModelVersionAdmin(AliasMoveAdmin):
    list_display = [
        "model_display",
        "version",
        "kind",
        "owner",
        "aliases_display",
        "base_model",
        "job",
        "mlflow_display",
        "created_at",
    ]
    list_filter = ["kind", "base_model", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["id", "registered_model__name", "owner__username", "job__id"]
    list_select_related = ["registered_model", "owner", "base_model", "job"]
    actions = ["promote_versions"]
    inlines = [VersionEvaluationInline]
    fieldsets = [
        (None, {"fields": ["id", "model_display", "version", "kind", "owner", "aliases_display", "job"]}),
        ("Files", {"fields": ["base_model", "adapter_path", "sha256", "size_bytes", "created_at"]}),
        ("Lineage", {"fields": ["lineage_display"]}),
        ("Metrics and evaluation", {"fields": ["metrics_display", "evaluation_display"]}),
        ("Alias history (moves to or from this version)", {"fields": ["alias_history"]}),
        ("MLflow", {"fields": ["mlflow_run_id", "mlflow_version", "mlflow_synced_at", "mlflow_error"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The aliases column: one query per page, not one per row.
        return super().get_queryset(request).prefetch_related("aliases")

    @admin.display(description="model", ordering="registered_model__name")
    def model_display(self, obj: ModelVersion) -> str:
        return _change_link(obj.registered_model, obj.registered_model.name)

    @admin.display(description="aliases")
    def aliases_display(self, obj: ModelVersion) -> str:
        return ", ".join(sorted(a.alias for a in obj.aliases.all())) or "-"

    @admin.display(description="MLflow")
    def mlflow_display(self, obj: ModelVersion) -> str:
        if obj.mlflow_error:
            return "error"
        return f"v{obj.mlflow_version}" if obj.mlflow_synced_at else "pending"

    @admin.display(description="lineage")
    def lineage_display(self, obj: ModelVersion) -> str:
        return _json_block(obj.lineage)

    @admin.display(description="metrics")
    def metrics_display(self, obj: ModelVersion) -> str:
        return _json_block(obj.metrics)

    @admin.display(description="latest evaluation")
    def evaluation_display(self, obj: ModelVersion) -> str:
        return _json_block(obj.evaluation)

    @admin.display(description="alias moves")
    def alias_history(self, obj: ModelVersion) -> str:
        return _history_table(list(version_alias_event_list(version=obj)))

    @admin.action(description="Promote the selected version to an alias…", permissions=["operate"])
    def promote_versions(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        versions = list(queryset.select_related("registered_model", "owner").order_by("registered_model", "version"))
        if len({v.registered_model_id for v in versions}) != len(versions):
            self.message_user(
                request, "Select at most one version per model: an alias points at one version.", messages.ERROR
            )
            return None
        form = AliasMoveForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            alias, reason = form.cleaned_data["alias"], form.cleaned_data["reason"]
            for version in versions:
                label = f"{version.owner.get_username()}/{version.registered_model.name}@{alias}"
                try:
                    move = model_promote(
                        owner=version.owner,
                        name=version.registered_model.name,
                        version=version.version,
                        alias=alias,
                        actor=request.user,
                        reason=reason,
                    )
                except ApiError as exc:
                    self._refused(request, label, exc)
                else:
                    self._moved(request, label, move.alias, move.event)
            return None  # back to the changelist, with the messages
        current = Alias.objects.filter(registered_model__in=[v.registered_model_id for v in versions])
        aliases: dict[str, list[str]] = {}
        for row in current.select_related("version").order_by("alias"):
            aliases.setdefault(row.registered_model_id, []).append(f"{row.alias} → v{row.version.version}")
        rows = [(v, ", ".join(aliases.get(v.registered_model_id, [])) or "none") for v in versions]
        return self._action_page(
            request,
            "admin/registry/modelversion/promote.html",
            "promote_versions",
            title="Promote to an alias",
            form=form,
            rows=rows,
        )


@admin.register(RegisteredModel)
class RegisteredModelAdmin(ReadOnlyModelAdmin):
    list_display = ["name", "owner", "version_count", "created_at"]
    list_filter = [("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["id", "name", "owner__username"]
    list_select_related = ["owner"]
    fields = ["id", "name", "owner", "description", "created_at", "versions_display"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The version count comes with the page's one query (a GROUP BY), not a COUNT per row.
        return super().get_queryset(request).annotate(version_count=Count("versions"))

    @admin.display(description="versions", ordering="version_count")
    def version_count(self, obj: RegisteredModel) -> int:
        return obj.version_count

    @admin.display(description="versions and aliases")
    def versions_display(self, obj: RegisteredModel) -> str:
        versions = list(model_version_list(registered_model=obj))
        if not versions:
            return "-"
        rows = [
            (
                _change_link(v, f"v{v.version}"),
                v.kind,
                ", ".join(sorted(a.alias for a in v.aliases.all())) or "-",
                v.job_id or "-",
                v.created_at.strftime("%Y-%m-%d %H:%M"),
            )
            for v in versions
        ]
        return format_html(
            "<table><thead><tr><th>version</th><th>kind</th><th>aliases</th><th>job</th><th>created</th></tr>"
            "</thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr>" + "<td>{}</td>" * 5 + "</tr>", rows),
        )


class AliasEventInline(ReadOnlyInline):
    model = AliasEvent
    fields = ["created_at", "kind", "from_version", "to_version", "actor", "reason"]
    verbose_name_plural = "history (newest first)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Each row shows two versions (named after their model) and a user: join them, not a query per cell.
        return (
            super()
            .get_queryset(request)
            .select_related("from_version__registered_model", "to_version__registered_model", "actor")
            .order_by("-created_at", "-id")
        )


@admin.register(Alias)
class AliasAdmin(AliasMoveAdmin):
    list_display = ["alias", "model_display", "owner_display", "version_display", "updated_at"]
    search_fields = ["registered_model__name", "registered_model__owner__username", "alias"]
    list_select_related = ["registered_model__owner", "version"]
    fields = ["model_display", "owner_display", "alias", "version_display", "updated_at", "mlflow_synced_at"]
    inlines = [AliasEventInline]
    actions = ["rollback_aliases"]

    @admin.display(description="model", ordering="registered_model__name")
    def model_display(self, obj: Alias) -> str:
        return _change_link(obj.registered_model, obj.registered_model.name)

    @admin.display(description="owner", ordering="registered_model__owner__username")
    def owner_display(self, obj: Alias) -> str:
        return obj.registered_model.owner.get_username()

    @admin.display(description="version", ordering="version__version")
    def version_display(self, obj: Alias) -> str:
        return _change_link(obj.version, f"v{obj.version.version}")

    @admin.action(description="Roll back the selected aliases…", permissions=["operate"])
    def rollback_aliases(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        aliases = list(queryset.select_related("registered_model__owner", "version").order_by("pk"))
        form = RollbackForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            to_version, reason = form.cleaned_data["to_version"], form.cleaned_data["reason"]
            for alias in aliases:
                model = alias.registered_model
                label = f"{model.owner.get_username()}/{model.name}@{alias.alias}"
                try:
                    move = model_rollback(
                        owner=model.owner,
                        name=model.name,
                        alias=alias.alias,
                        to_version=to_version,
                        actor=request.user,
                        reason=reason,
                    )
                except ApiError as exc:
                    self._refused(request, label, exc)
                else:
                    self._moved(request, label, move.alias, move.event)
            return None
        return self._action_page(
            request,
            "admin/registry/alias/rollback.html",
            "rollback_aliases",
            title="Roll back aliases",
            form=form,
            aliases=aliases,
        )


@admin.register(AliasEvent)
class AliasEventAdmin(ReadOnlyModelAdmin):
    list_display = ["created_at", "alias", "kind", "from_version", "to_version", "actor", "reason"]
    list_filter = ["kind", ("actor", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["alias__registered_model__name", "alias__alias", "reason"]
    list_select_related = [
        "alias__registered_model",
        "from_version__registered_model",
        "to_version__registered_model",
        "actor",
    ]


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
        return _change_link(obj.version, f"{obj.version.registered_model.name} v{obj.version.version}")

    @admin.display(description="options")
    def options_display(self, obj: Evaluation) -> str:
        return _json_block(obj.options)

    @admin.display(description="metrics")
    def metrics_display(self, obj: Evaluation) -> str:
        return _json_block(obj.metrics)

    @admin.display(description="error")
    def error_display(self, obj: Evaluation) -> str:
        return _json_block(obj.error)

    @admin.display(description=f"examples (first {EXAMPLES_SHOWN})")
    def examples_display(self, obj: Evaluation) -> str:
        return _json_block((obj.examples or [])[:EXAMPLES_SHOWN])


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
        return _side(obj.version_a)

    @admin.display(description="B")
    def side_b(self, obj: Comparison) -> str:
        return _side(obj.version_b)

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
