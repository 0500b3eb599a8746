"""Admin building blocks shared by the apps' ``admin.py`` modules."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """A view-only admin page: rows are written by services only, so add, change and delete are off.

    Without the change permission Django renders every field read-only, so subclasses list
    their ``fields`` (model fields and display methods alike) and need no ``readonly_fields``.
    Operations that do change such rows (cancel a job, ...) are explicit admin views that
    call a service and check their own permission.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """A view-only table of related rows on a parent's page (events, checkpoints, alias history).

    Like ``ReadOnlyModelAdmin``: no add, change or delete. Subclasses list their ``fields``;
    every one of them is read-only.
    """

    extra = 0
    can_delete = False
    show_change_link = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Unlike a view-only change page, an inline still builds a form over its fields, and
        # Django refuses one that names a non-editable field (``created_at``): none is editable.
        return [*self.readonly_fields, *(self.fields or [])]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
