"""Routes for models and inference (placeholders answering 503 until their issues land)."""

from __future__ import annotations

from django.urls import path, re_path

from inference.apis import ChatCompletionCreateApi, ModelAliasMoveApi, ModelListApi, ModelVersionListApi

urlpatterns = [
    path("v1/chat/completions", ChatCompletionCreateApi.as_view(), name="chat-completions"),
    path("v1/completions", ChatCompletionCreateApi.as_view(), name="completions"),
    path("v1/models", ModelListApi.as_view(), name="models-list"),
    re_path(r"^v1/models/(?P<name>[^/]+)/versions/?$", ModelVersionListApi.as_view(), name="model-versions"),
    re_path(r"^v1/models/(?P<name>[^/]+)/promote/?$", ModelAliasMoveApi.as_view(), name="model-promote"),
    re_path(r"^v1/models/(?P<name>[^/]+)/rollback/?$", ModelAliasMoveApi.as_view(), name="model-rollback"),
]
