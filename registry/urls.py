"""Registry routes: ``/v1/models`` (OpenAI's list and model), a model's versions, aliases, alias
history, promote and rollback, evaluations and comparisons (see docs/api.md).

Every route accepts an optional trailing slash. A model id may be an ``ft:`` id (colons, no slash).
"""

from __future__ import annotations

from django.urls import re_path

from registry import apis

_NAME = r"(?P<name>[^/]+)"
_VERSION = r"(?P<version>[^/]+)"
_EVALUATION = r"(?P<evaluation_id>[A-Za-z0-9_-]+)"
_COMPARISON = r"(?P<comparison_id>[A-Za-z0-9_-]+)"

urlpatterns = [
    re_path(r"^v1/models/?$", apis.ModelListApi.as_view(), name="models-list"),
    re_path(r"^v1/models/(?P<model_id>[^/]+)/?$", apis.ModelDetailApi.as_view(), name="model-detail"),
    re_path(rf"^v1/models/{_NAME}/versions/?$", apis.ModelVersionListApi.as_view(), name="model-versions"),
    re_path(
        rf"^v1/models/{_NAME}/versions/{_VERSION}/?$",
        apis.ModelVersionDetailApi.as_view(),
        name="model-version-detail",
    ),
    re_path(
        rf"^v1/models/{_NAME}/versions/{_VERSION}/evaluations/?$",
        apis.ModelVersionEvaluationApi.as_view(),
        name="model-version-evaluations",
    ),
    re_path(rf"^v1/models/{_NAME}/promote/?$", apis.ModelPromoteApi.as_view(), name="model-promote"),
    re_path(rf"^v1/models/{_NAME}/rollback/?$", apis.ModelRollbackApi.as_view(), name="model-rollback"),
    re_path(rf"^v1/models/{_NAME}/aliases/?$", apis.ModelAliasListApi.as_view(), name="model-aliases"),
    re_path(
        rf"^v1/models/{_NAME}/aliases/(?P<alias>[^/]+)/history/?$",
        apis.ModelAliasHistoryApi.as_view(),
        name="model-alias-history",
    ),
    re_path(rf"^v1/models/{_NAME}/comparisons/?$", apis.ModelComparisonCreateApi.as_view(), name="model-comparisons"),
    re_path(
        rf"^v1/evaluations/{_EVALUATION}/?$",
        apis.EvaluationDetailApi.as_view(),
        name="evaluation-detail",
    ),
    re_path(
        rf"^v1/comparisons/{_COMPARISON}/?$",
        apis.ComparisonDetailApi.as_view(),
        name="comparison-detail",
    ),
    re_path(
        rf"^v1/comparisons/{_COMPARISON}/report/?$",
        apis.ComparisonReportApi.as_view(),
        name="comparison-report",
    ),
]
