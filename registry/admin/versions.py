"""Admin for registered models, versions (with lineage), aliases and their history, and the
promote / rollback actions with their confirmation pages (the same services as the API and commands)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from registry.admin.html import change_link, history_table, json_block
from registry.models import Alias, AliasEvent, Evaluation, ModelVersion, RegisteredModel
from registry.selectors import model_version_list, version_alias_event_list, version_comparison_rows
from registry.services.aliases import model_promote, model_rollback
from registry.services.traffic import traffic_summary
from tuninglab.admin_base import ReadOnlyInline, ReadOnlyModelAdmin
from tuninglab.errors import ApiError

# Columns of the comparison page: more than this is no longer readable side by side.
MAX_COMPARED = 6


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
        return change_link(obj, obj.id)

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
    actions = ["compare_versions", "promote_versions"]
    inlines = [VersionEvaluationInline]
    fieldsets = [
        (None, {"fields": ["id", "model_display", "version", "kind", "owner", "aliases_display", "job"]}),
        ("Files", {"fields": ["base_model", "adapter_path", "sha256", "size_bytes", "created_at"]}),
        ("Lineage", {"fields": ["lineage_display"]}),
        ("Metrics and evaluation", {"fields": ["metrics_display", "evaluation_display"]}),
        ("Live traffic (inference gateway)", {"fields": ["traffic_display"]}),
        ("Alias history (moves to or from this version)", {"fields": ["alias_history"]}),
        ("MLflow", {"fields": ["mlflow_run_id", "mlflow_version", "mlflow_synced_at", "mlflow_error"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The aliases column: one query per page, not one per row.
        return super().get_queryset(request).prefetch_related("aliases")

    @admin.display(description="model", ordering="registered_model__name")
    def model_display(self, obj: ModelVersion) -> str:
        return change_link(obj.registered_model, obj.registered_model.name)

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
        return json_block(obj.lineage)

    @admin.display(description="metrics")
    def metrics_display(self, obj: ModelVersion) -> str:
        return json_block(obj.metrics)

    @admin.display(description="latest evaluation")
    def evaluation_display(self, obj: ModelVersion) -> str:
        return json_block(obj.evaluation)

    @admin.display(description="requests, errors, latency, tokens")
    def traffic_display(self, obj: ModelVersion) -> str:
        return json_block(traffic_summary(obj))

    @admin.display(description="alias moves")
    def alias_history(self, obj: ModelVersion) -> str:
        return history_table(list(version_alias_event_list(version=obj)))

    @admin.action(description="Compare the selected versions side by side", permissions=["view"])
    def compare_versions(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        versions = list(
            queryset.select_related("registered_model", "base_model", "job")
            .prefetch_related("aliases")
            .order_by("registered_model__name", "version")[: MAX_COMPARED + 1]
        )
        if not 2 <= len(versions) <= MAX_COMPARED:
            self.message_user(request, f"Select 2 to {MAX_COMPARED} versions to compare.", messages.ERROR)
            return None
        return self._action_page(
            request,
            "admin/registry/modelversion/compare.html",
            "compare_versions",
            title="Compare versions",
            versions=versions,
            rows=version_comparison_rows(versions=versions),
        )

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
                change_link(v, f"v{v.version}"),
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
        return change_link(obj.registered_model, obj.registered_model.name)

    @admin.display(description="owner", ordering="registered_model__owner__username")
    def owner_display(self, obj: Alias) -> str:
        return obj.registered_model.owner.get_username()

    @admin.display(description="version", ordering="version__version")
    def version_display(self, obj: Alias) -> str:
        return change_link(obj.version, f"v{obj.version.version}")

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
