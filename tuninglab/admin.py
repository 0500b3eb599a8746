"""Admin for API keys (create with the secret shown once on the page itself, list, revoke)
and for idempotency records (view, delete).

Writes go through ``tuninglab.services``. The secret is rendered straight into the
response of the "add" request instead of being put in a flash message: Django's message
storage keeps pending messages in a cookie or the session table, and the raw key must
never be stored anywhere.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from tuninglab.admin_base import ReadOnlyModelAdmin
from tuninglab.models import ApiKey, IdempotencyRecord
from tuninglab.services import api_key_create, api_key_revoke


class ApiKeyAddForm(forms.ModelForm):
    """Only the owner and a label: the secret, prefix and hash are made by ``api_key_create``."""

    class Meta:
        model = ApiKey
        fields = ["owner", "name"]


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix_display", "name", "owner", "created_at", "last_used_at", "is_active_display"]
    list_filter = [RevokedFilter, "created_at"]
    search_fields = ["prefix", "name", "owner__username"]
    list_select_related = ["owner"]
    autocomplete_fields = ["owner"]
    actions = ["revoke_keys"]
    # key_hash is never shown or editable: it is useless to a human and only helps an attacker.
    readonly_fields = ["prefix", "owner", "name", "created_at", "last_used_at", "revoked_at"]
    fields = ["prefix", "owner", "name", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="key", ordering="prefix")
    def prefix_display(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="active", boolean=True)
    def is_active_display(self, obj: ApiKey) -> bool:
        return obj.is_active

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
            kwargs["fields"] = ["owner", "name"]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return ["owner", "name"] if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [] if obj is None else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Revoke instead: a revoked row keeps the audit trail (who had which key, when used).
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            return  # every field is read-only on the change page
        row, raw = api_key_create(owner=form.cleaned_data["owner"], name=form.cleaned_data.get("name") or "")
        # The admin goes on to log and redirect using ``obj``: make it the row just created.
        obj.pk = row.pk
        obj.prefix, obj.key_hash, obj.created_at = row.prefix, row.key_hash, row.created_at
        obj._state.adding = False
        request._tuninglab_new_api_key = raw  # read by response_add, never persisted

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        raw = getattr(request, "_tuninglab_new_api_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "api_key": obj,
            "raw_key": raw,
        }
        response = TemplateResponse(request, "admin/tuninglab/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = 0
        for key in queryset:
            if key.revoked_at is None:
                api_key_revoke(key=key)
                revoked += 1
        already = queryset.count() - revoked
        msg = f"Revoked {revoked} API key(s)."
        if already:
            msg += f" {already} were already revoked."
        self.message_user(request, msg, messages.SUCCESS)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyModelAdmin):
    """Replayed responses, for debugging a client that retried a POST."""

    list_display = ["key", "owner", "method", "path", "response_status", "created_at"]
    list_filter = ["method", "response_status"]
    search_fields = ["key", "owner__username", "path"]
    list_select_related = ["owner"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Unlike the other view-only pages, delete stays on: it frees the key before the 24 h
        # expiry, so the next request with it runs again instead of replaying (an operator's
        # fix for a client that reused a key by mistake).
        return admin.ModelAdmin.has_delete_permission(self, request, obj)
