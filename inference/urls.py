"""Inference routes (placeholders answering 503 until the vLLM gateway serves them)."""

from __future__ import annotations

from django.urls import path

from inference.apis import ChatCompletionCreateApi

urlpatterns = [
    path("v1/chat/completions", ChatCompletionCreateApi.as_view(), name="chat-completions"),
    path("v1/completions", ChatCompletionCreateApi.as_view(), name="completions"),
]
