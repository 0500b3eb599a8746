"""Routes for tuning jobs: seed style, resource style and OpenAI style (same views, see docs/api.md).

Resource and OpenAI routes accept an optional trailing slash.
"""

from __future__ import annotations

from django.urls import path, re_path

from tunings.apis import jobs

_ID = r"(?P<job_id>[A-Za-z0-9_-]+)"

urlpatterns = [
    # seed style
    path("v1/tunings.create", jobs.JobCreateApi.as_view(), name="tunings-create"),
    path("v1/tunings.get", jobs.JobStatusApi.as_view(), name="tunings-get"),
    path("v1/tunings.list", jobs.JobListApi.as_view(), name="tunings-list"),
    path("v1/tunings.cancel", jobs.JobCancelByBodyApi.as_view(), name="tunings-cancel"),
    # resource style
    re_path(r"^v1/tunings/?$", jobs.JobCollectionApi.as_view(), name="tuning-collection"),
    re_path(rf"^v1/tunings/{_ID}/?$", jobs.JobDetailApi.as_view(), name="tuning-detail"),
    re_path(rf"^v1/tunings/{_ID}/cancel/?$", jobs.JobCancelApi.as_view(), name="tuning-cancel"),
    re_path(rf"^v1/tunings/{_ID}/events/?$", jobs.JobEventListApi.as_view(), name="tuning-events"),
    re_path(rf"^v1/tunings/{_ID}/checkpoints/?$", jobs.JobCheckpointListApi.as_view(), name="tuning-checkpoints"),
    # OpenAI style (the official ``openai`` package calls these); create answers 200 like OpenAI
    re_path(r"^v1/fine_tuning/jobs/?$", jobs.JobCollectionApi.as_view(created_status=200), name="ft-collection"),
    re_path(rf"^v1/fine_tuning/jobs/{_ID}/?$", jobs.JobDetailApi.as_view(), name="ft-detail"),
    re_path(rf"^v1/fine_tuning/jobs/{_ID}/cancel/?$", jobs.JobCancelApi.as_view(), name="ft-cancel"),
    re_path(rf"^v1/fine_tuning/jobs/{_ID}/events/?$", jobs.JobEventListApi.as_view(), name="ft-events"),
    re_path(rf"^v1/fine_tuning/jobs/{_ID}/checkpoints/?$", jobs.JobCheckpointListApi.as_view(), name="ft-checkpoints"),
]
