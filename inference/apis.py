"""Inference routes: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

Placeholders until the vLLM gateway serves them: they answer **503**
``inference_unavailable`` in the API's error shape, so the SDK and the ``openai`` package
get a clear, typed error instead of an HTML 404 page.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tuninglab.errors import ServiceUnavailableError


class ChatCompletionCreateApi(APIView):
    """``POST /v1/chat/completions`` (and ``/v1/completions``): 503 until the gateway serves it."""

    @extend_schema(request=OpenApiTypes.OBJECT, responses={503: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        raise ServiceUnavailableError(
            "Inference (chat completions) is not available on this server yet.",
            code="inference_unavailable",
            suggestion="Fine-tuned adapters are stored in the registry; "
            "serving them arrives with the inference gateway.",
        )
