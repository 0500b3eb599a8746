"""Routes for /v1/files (OpenAI shape; the official ``openai`` package calls these).

A trailing slash is accepted, as on the job routes.
"""

from __future__ import annotations

from django.urls import re_path

from tunings.apis import files

_ID = r"(?P<file_id>[A-Za-z0-9_-]+)"

urlpatterns = [
    re_path(r"^v1/files/?$", files.FileCollectionApi.as_view(), name="file-collection"),
    re_path(rf"^v1/files/{_ID}/?$", files.FileDetailApi.as_view(), name="file-detail"),
    re_path(rf"^v1/files/{_ID}/content/?$", files.FileContentApi.as_view(), name="file-content"),
]
