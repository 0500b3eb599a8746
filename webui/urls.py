"""Web pages: jobs and models, login required, owner-scoped."""

from __future__ import annotations

from django.urls import path

from webui.views import jobs, models

app_name = "webui"
urlpatterns = [
    path("jobs/", jobs.job_list, name="job-list"),
    path("jobs/<str:job_id>/", jobs.job_detail, name="job-detail"),
    path("jobs/<str:job_id>/live.json", jobs.job_live, name="job-live"),
    path("jobs/<str:job_id>/curves.svg", jobs.job_curves_svg, name="job-curves-svg"),
    path("jobs/<str:job_id>/cancel", jobs.job_cancel, name="job-cancel"),
    path("models/", models.model_list, name="model-list"),
    path("models/<str:name>/", models.model_detail, name="model-detail"),
    path("models/<str:name>/live.json", models.model_live, name="model-live"),
    path("models/<str:name>/promote", models.model_promote_view, name="model-promote"),
    path("models/<str:name>/rollback", models.model_rollback_view, name="model-rollback"),
]
