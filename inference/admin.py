"""Admin for inference: each vLLM process (status and the last lines of its log), routes, and
recorded shadow answers. All view-only: the supervisor writes the process rows, routes change
through the API (``PUT /v1/models/{name}/route``), which runs the serving check first."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from inference.models import Route, RouteSplit, ServingProcess, ShadowRecord
from inference.supervisor import tail
from tuninglab.admin_base import ReadOnlyInline, ReadOnlyModelAdmin

LOG_LINES = 60


@admin.register(ServingProcess)
class ServingProcessAdmin(ReadOnlyModelAdmin):
    list_display = ["base_name", "status", "url", "pid", "restarts", "adapters", "ready_at", "heartbeat_at"]
    fields = [
        "base_name",
        "status",
        "url",
        "pid",
        "supervisor_pid",
        "supervisor_host",
        "started_at",
        "ready_at",
        "restarts",
        "last_exit",
        "loaded_adapters",
        "reconciled_at",
        "heartbeat_at",
        "argv",
        "log_path",
        "log_tail",
    ]

    @admin.display(description="adapters loaded")
    def adapters(self, obj: ServingProcess) -> int:
        return len(obj.loaded_adapters or [])

    @admin.display(description=f"last {LOG_LINES} log lines")
    def log_tail(self, obj: ServingProcess) -> str:
        text = tail(obj.log_path, lines=LOG_LINES) if obj.log_path else ""
        return format_html('<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>', text or "-")


class RouteSplitInline(ReadOnlyInline):
    model = RouteSplit
    fields = ["version", "weight"]


@admin.register(Route)
class RouteAdmin(ReadOnlyModelAdmin):
    list_display = ["registered_model", "sticky", "shadow_version", "shadow_percent", "updated_at", "updated_by"]
    search_fields = ["registered_model__name", "registered_model__owner__username"]
    list_select_related = ["registered_model", "shadow_version", "updated_by"]
    inlines = [RouteSplitInline]


@admin.register(ShadowRecord)
class ShadowRecordAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "registered_model", "shadow_version", "endpoint", "shadow_latency_ms", "error", "created_at"]
    list_filter = ["endpoint"]
    search_fields = ["id", "registered_model__name", "owner__username"]
    list_select_related = ["registered_model", "shadow_version"]
