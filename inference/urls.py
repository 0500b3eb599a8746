"""Inference routes: the OpenAI-compatible gateway, ``/generate``, routes, traffic, serving status."""

from __future__ import annotations

from django.urls import path, re_path

from inference import apis

_NAME = r"(?P<name>[^/]+)"

urlpatterns = [
    re_path(r"^v1/chat/completions/?$", apis.ChatCompletionCreateApi.as_view(), name="chat-completions"),
    re_path(r"^v1/completions/?$", apis.CompletionCreateApi.as_view(), name="completions"),
    path("generate", apis.GenerateApi.as_view(), name="generate"),
    re_path(r"^v1/serving/?$", apis.ServingStatusApi.as_view(), name="serving-status"),
    re_path(rf"^v1/models/{_NAME}/route/?$", apis.ModelRouteApi.as_view(), name="model-route"),
    re_path(rf"^v1/models/{_NAME}/traffic/?$", apis.ModelTrafficApi.as_view(), name="model-traffic"),
    re_path(
        rf"^v1/models/{_NAME}/shadow_records/?$", apis.ModelShadowRecordListApi.as_view(), name="model-shadow-records"
    ),
]
