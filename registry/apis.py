"""Registry routes: list models, list a model's versions, promote and roll back an alias.

Placeholders for now: they answer **503** in the API's error shape, so the SDK and the
``openai`` package get a clear, typed error instead of an HTML 404 page. The code is
``inference_unavailable``, as on the inference routes: it is the one documented code for
every pending route (docs/api.md), and clients already check for it.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tuninglab.errors import ServiceUnavailableError


def _registry_unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The model registry API is not available on this server yet.",
        code="inference_unavailable",
        suggestion="Finished jobs already register their adapters as model versions (operators see them in "
        "the admin); listing, promoting and rolling them back over the API comes with the registry routes.",
    )


class ModelListApi(APIView):
    """``GET /v1/models``: 503 until the registry serves it."""

    @extend_schema(responses={503: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        raise _registry_unavailable()


class ModelVersionListApi(APIView):
    """``GET /v1/models/{name}/versions``: 503 until the registry serves it."""

    @extend_schema(responses={503: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str) -> Response:
        raise _registry_unavailable()


class ModelAliasMoveApi(APIView):
    """``POST /v1/models/{name}/promote|rollback``: 503 until the registry serves it."""

    @extend_schema(request=OpenApiTypes.OBJECT, responses={503: OpenApiTypes.OBJECT})
    def post(self, request: Request, name: str) -> Response:
        raise _registry_unavailable()
