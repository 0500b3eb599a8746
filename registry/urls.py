"""Registry routes: ``/v1/models`` and a model's versions, promote and rollback."""

from __future__ import annotations

from django.urls import path, re_path

from registry.apis import ModelAliasMoveApi, ModelListApi, ModelVersionListApi

urlpatterns = [
    path("v1/models", ModelListApi.as_view(), name="models-list"),
    re_path(r"^v1/models/(?P<name>[^/]+)/versions/?$", ModelVersionListApi.as_view(), name="model-versions"),
    re_path(r"^v1/models/(?P<name>[^/]+)/promote/?$", ModelAliasMoveApi.as_view(), name="model-promote"),
    re_path(r"^v1/models/(?P<name>[^/]+)/rollback/?$", ModelAliasMoveApi.as_view(), name="model-rollback"),
]
