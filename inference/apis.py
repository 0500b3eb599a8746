"""Placeholders for the model registry and inference routes.

The registry (versions, promote, rollback) and the vLLM gateway arrive in their own issues.
Until then their routes exist and answer **503** ``inference_unavailable`` in the API's
error shape, so the SDK and the ``openai`` package get a clear, typed error instead of an
HTML 404 page.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tuninglab.errors import ServiceUnavailableError


def _unavailable(feature: str) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"{feature} is not available on this server yet.",
        code="inference_unavailable",
        suggestion="Fine-tuned adapters are stored in the registry; serving them arrives with the inference gateway.",
    )


class ChatCompletionCreateApi(APIView):
    """``POST /v1/chat/completions`` (and ``/v1/completions``): 503 until the gateway lands."""

    @extend_schema(request=OpenApiTypes.OBJECT, responses={503: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        raise _unavailable("Inference (chat completions)")


class ModelListApi(APIView):
    """``GET /v1/models``: 503 until the registry routes land."""

    @extend_schema(responses={503: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        raise _unavailable("The model registry API")


class ModelVersionListApi(APIView):
    """``GET /v1/models/{name}/versions``: 503 until the registry routes land."""

    @extend_schema(responses={503: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str) -> Response:
        raise _unavailable("The model registry API")


class ModelAliasMoveApi(APIView):
    """``POST /v1/models/{name}/promote|rollback``: 503 until the registry routes land."""

    @extend_schema(request=OpenApiTypes.OBJECT, responses={503: OpenApiTypes.OBJECT})
    def post(self, request: Request, name: str) -> Response:
        raise _unavailable("The model registry API")
