"""Inference routes: the OpenAI-compatible gateway, the seed's ``/generate``, routes and live traffic.

* ``POST /v1/chat/completions``, ``POST /v1/completions``: ``inference.gateway.proxy``.
* ``POST /generate?adapter=<name>``: ``{"prompt", "max_tokens"?, "temperature"?}`` →
  ``{"model", "text", "finish_reason", "usage"}`` (the seed's simple route).
* ``GET|PUT|DELETE /v1/models/{name}/route``: A/B split, sticky key, shadow.
* ``GET /v1/models/{name}/traffic``: live counters per version.
* ``GET /v1/models/{name}/shadow_records``: recorded shadow answers, newest first.
* ``GET /v1/serving``: which base models are served and whether they are ready.
"""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.config import served_bases
from inference.gateway import proxy
from inference.models import ServingProcess, ShadowRecord
from inference.services.routes import route_delete, route_get, route_set, route_to_dict
from registry.models import ModelVersion
from registry.selectors import registered_model_get
from registry.services.traffic import traffic_summaries
from tuninglab.errors import InvalidRequestError
from tuninglab.pagination import parse_limit

_OBJECT = OpenApiTypes.OBJECT
GENERATE_PARAMETERS = {"max_tokens", "temperature", "top_p", "stop", "seed"}


class AnyAcceptNegotiation(DefaultContentNegotiation):
    """The gateway answers JSON, or an SSE stream it builds itself: a client that accepts only
    ``text/event-stream`` (curl, EventSource) gets the stream (or a JSON error), not a 406."""

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


class GatewayApi(APIView):
    content_negotiation_class = AnyAcceptNegotiation


class ChatCompletionCreateApi(GatewayApi):
    """``POST /v1/chat/completions``: OpenAI's chat API on a registered name, alias, version, ``ft:`` id or base."""

    @extend_schema(request=_OBJECT, responses={200: _OBJECT, 404: _OBJECT, 503: _OBJECT})
    def post(self, request: Request) -> Any:
        return proxy(request, request.data, "chat")


class CompletionCreateApi(GatewayApi):
    """``POST /v1/completions``: OpenAI's legacy text completions, same model names."""

    @extend_schema(request=_OBJECT, responses={200: _OBJECT, 404: _OBJECT, 503: _OBJECT})
    def post(self, request: Request) -> Any:
        return proxy(request, request.data, "completions")


class GenerateApi(GatewayApi):
    """``POST /generate?adapter=<name>``: one prompt in, one text out (no adapter: the served base)."""

    @extend_schema(
        parameters=[OpenApiParameter("adapter", str, description="A model name as in /v1/completions")],
        request=_OBJECT,
        responses={200: _OBJECT},
    )
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("'prompt' must be a non-empty string.", code="invalid_prompt", param="prompt")
        unknown = sorted(set(body) - GENERATE_PARAMETERS - {"prompt"})
        if unknown:
            raise InvalidRequestError(
                f"Unknown parameter {unknown[0]!r}.",
                code="unsupported_parameter",
                param=unknown[0],
                suggestion=f"/generate takes prompt and {', '.join(sorted(GENERATE_PARAMETERS))}; "
                "use /v1/completions for the rest.",
            )
        model = request.query_params.get("adapter") or next((b.name for b in served_bases()), "")
        upstream = {"max_tokens": 64, **{k: body[k] for k in GENERATE_PARAMETERS & body.keys()}}
        answer = json.loads(proxy(request, {**upstream, "model": model, "prompt": prompt}, "completions").content)
        choice = (answer.get("choices") or [{}])[0]
        return Response(
            {
                "model": answer.get("model"),
                "text": choice.get("text", ""),
                "finish_reason": choice.get("finish_reason"),
                "usage": answer.get("usage"),
            }
        )


class ModelRouteApi(APIView):
    """``GET|PUT|DELETE /v1/models/{name}/route``: the model's traffic split and shadow."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, name: str) -> Response:
        return Response(route_to_dict(route_get(owner=request.user, name=name)))

    @extend_schema(request=_OBJECT, responses=_OBJECT)
    def put(self, request: Request, name: str) -> Response:
        route = route_set(owner=request.user, name=name, payload=request.data, actor=request.user)
        return Response(route_to_dict(route))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        route_delete(owner=request.user, name=name)
        return Response(status=204)


class ModelTrafficApi(APIView):
    """``GET /v1/models/{name}/traffic``: requests, errors, latency and tokens per version, live."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, name: str) -> Response:
        registered = registered_model_get(owner=request.user, name=name)
        versions = list(ModelVersion.objects.filter(registered_model=registered).order_by("version"))
        summaries = traffic_summaries(versions)
        data = [{"version": v.version, **summaries[v.id]} for v in versions]
        return Response({"object": "list", "model": registered.name, "data": data})


class ModelShadowRecordListApi(APIView):
    """``GET /v1/models/{name}/shadow_records?limit=``: what shadow versions answered, newest first."""

    @extend_schema(parameters=[OpenApiParameter("limit", int)], responses=_OBJECT)
    def get(self, request: Request, name: str) -> Response:
        registered = registered_model_get(owner=request.user, name=name)
        limit = parse_limit(request)
        rows = (
            ShadowRecord.objects.filter(owner=request.user, registered_model=registered)
            .select_related("primary_version", "shadow_version")
            .order_by("-created_at", "-id")[:limit]
        )
        data = [
            {
                "id": r.id,
                "object": "shadow_record",
                "endpoint": r.endpoint,
                "primary_version": r.primary_version.version if r.primary_version else None,
                "shadow_version": r.shadow_version.version,
                "request": r.request,
                "primary_output": r.primary_output,
                "shadow_output": r.shadow_output,
                "shadow_latency_ms": r.shadow_latency_ms,
                "error": r.error or None,
                "created_at": int(r.created_at.timestamp()),
            }
            for r in rows
        ]
        return Response({"object": "list", "data": data})


class ServingStatusApi(APIView):
    """``GET /v1/serving``: each served base model and whether its vLLM is ready."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request) -> Response:
        rows = {r.base_name: r for r in ServingProcess.objects.all()}
        data = []
        for base in served_bases():
            row = rows.get(base.name)
            data.append(
                {
                    "base_model": base.name,
                    "status": row.status if row else "stopped",
                    "ready": bool(row and row.status == ServingProcess.Status.READY),
                    "ready_since": int(row.ready_at.timestamp()) if row and row.ready_at else None,
                    "restarts": row.restarts if row else 0,
                }
            )
        return Response({"object": "list", "data": data})
