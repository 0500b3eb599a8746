"""Admin for the playground: sessions with their messages, view-only (the playground's services write them)."""

from __future__ import annotations

from django.contrib import admin

from playground.models import ChatMessage, ChatSession
from tuninglab.admin_base import ReadOnlyInline, ReadOnlyModelAdmin


class ChatMessageInline(ReadOnlyInline):
    model = ChatMessage
    fields = ["side", "order", "role", "content", "model", "finish_reason", "completion_tokens", "error_code"]
    ordering = ["side", "order"]


@admin.register(ChatSession)
class ChatSessionAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "owner", "title", "model", "compare_model", "updated_at"]
    list_select_related = ["owner"]
    search_fields = ["id", "title", "model", "compare_model", "owner__username"]
    fields = [
        "id",
        "owner",
        "title",
        "model",
        "compare_model",
        "system_prompt",
        "temperature",
        "max_tokens",
        "created_at",
        "updated_at",
    ]
    inlines = [ChatMessageInline]


@admin.register(ChatMessage)
class ChatMessageAdmin(ReadOnlyModelAdmin):
    list_display = ["id", "session", "side", "order", "role", "model", "finish_reason", "error_code", "created_at"]
    list_filter = ["role", "side", "finish_reason"]
    list_select_related = ["session"]
    search_fields = ["session__id", "content", "error_code"]
    fields = [
        "session",
        "side",
        "order",
        "role",
        "content",
        "model",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "error_code",
        "error_message",
        "error_suggestion",
        "created_at",
    ]
