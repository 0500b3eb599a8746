"""Admin building blocks shared by the apps' ``admin.py`` modules."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """A view-only admin page: rows are written by services only, so add, change and delete are off.

    Operations that do change such rows (cancel a job, ...) are explicit admin views that
    call a service and check their own permission.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
