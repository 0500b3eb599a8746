"""Registry endpoints: thin views over ``registry.selectors`` (reads) and one service each (writes).

Routes (``registry/urls.py``, docs/api.md "Models and the registry"):

* ``GET /v1/models`` and ``GET /v1/models/{id}``: OpenAI's model list and model, over base
  models, the caller's registered models and the ``ft:`` ids of the caller's jobs;
* a registered model's versions, aliases and alias history; ``promote`` and ``rollback``;
* evaluations of a version and A/B comparisons (queued here, run by a worker), the
  comparison's Markdown report.

Every route is scoped to the caller: another owner's model, version, evaluation or
comparison answers 404 exactly like one that does not exist. Every POST honours
``Idempotency-Key``; lists whose rows grow page with ``after`` / ``limit``.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.evaluation.report import comparison_markdown
from registry.models import BaseModel, ModelVersion
from registry.selectors import (
    alias_event_list,
    alias_get,
    alias_list,
    base_model_list,
    comparison_get,
    evaluation_dataset_get,
    evaluation_get,
    evaluation_list,
    fine_tuned_version_list,
    model_lookup,
    model_version_get,
    model_version_list,
    registered_model_get,
    registered_model_list,
    registered_model_summary,
)
from registry.serializers import (
    alias_event_to_dict,
    alias_move_request,
    alias_move_to_dict,
    alias_to_dict,
    base_model_to_dict,
    comparison_request,
    comparison_to_dict,
    evaluation_request,
    evaluation_to_dict,
    fine_tuned_model_to_dict,
    model_version_to_dict,
    parse_version_number,
    registered_model_to_dict,
)
from registry.services.aliases import model_promote, model_rollback
from registry.services.evaluations import comparison_create, evaluation_create
from tuninglab.errors import InvalidRequestError, NotFoundError
from tuninglab.idempotency import idempotent
from tuninglab.pagination import list_response, paginate

# Objects are documented in docs/api.md; the schema names the operations and their parameters.
_OBJECT = OpenApiTypes.OBJECT
_PAGE = [OpenApiParameter("after", str), OpenApiParameter("limit", int)]
_MOVE = extend_schema(request=_OBJECT, responses=_OBJECT)
_QUEUE = extend_schema(request=_OBJECT, responses={202: _OBJECT})


def _version(request: Request, name: str, version: str) -> ModelVersion:
    """Version ``version`` (a path segment) of the caller's model ``name``; a non-number is a 404."""
    try:
        number = parse_version_number(version)
    except InvalidRequestError:
        raise NotFoundError(
            f"No version {version} of model {name}.", code="version_not_found", param="version"
        ) from None
    return model_version_get(owner=request.user, name=name, version=number)


class ModelListApi(APIView):
    """OpenAI's model list: every base model, the caller's registered models and ``ft:`` ids.

    One page, like OpenAI's ``GET /v1/models`` (the ``openai`` package reads no cursor there).
    """

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request) -> Response:
        data = [base_model_to_dict(base) for base in base_model_list()]
        data += [registered_model_to_dict(model) for model in registered_model_list(owner=request.user)]
        data += [fine_tuned_model_to_dict(version) for version in fine_tuned_version_list(owner=request.user)]
        return Response({"object": "list", "data": data})


class ModelDetailApi(APIView):
    """One model by id: a base model's name, a registered model's name, or an ``ft:`` id (its version)."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, model_id: str) -> Response:
        found = model_lookup(owner=request.user, model_id=model_id)
        if isinstance(found, BaseModel):
            return Response(base_model_to_dict(found))
        if isinstance(found, ModelVersion):
            return Response(fine_tuned_model_to_dict(found, detail=True))
        return Response(registered_model_to_dict(found, summary=registered_model_summary(registered_model=found)))


class ModelVersionListApi(APIView):
    """A registered model's versions, newest first."""

    @extend_schema(parameters=_PAGE, responses=_OBJECT)
    def get(self, request: Request, name: str) -> Response:
        model = registered_model_get(owner=request.user, name=name)
        versions, has_more = paginate(model_version_list(registered_model=model), request)
        return Response(list_response([model_version_to_dict(v) for v in versions], has_more))


class ModelVersionDetailApi(APIView):
    """One version with its lineage, metrics, evaluation summary and MLflow state."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, name: str, version: str) -> Response:
        return Response(model_version_to_dict(_version(request, name, version)))


class ModelPromoteApi(APIView):
    """Point an alias (default ``production``) at a version (default: the newest), after the serving check."""

    @_MOVE
    @idempotent
    def post(self, request: Request, name: str) -> Response:
        body = alias_move_request(request.data)
        move = model_promote(
            owner=request.user,
            name=name,
            version=body.version,
            alias=body.alias,
            actor=request.user,
            reason=body.reason,
        )
        return Response(alias_move_to_dict(alias=move.alias, event=move.event))


class ModelRollbackApi(APIView):
    """Move an alias back: to the version it held before (twice walks further back), or to ``version``."""

    @_MOVE
    @idempotent
    def post(self, request: Request, name: str) -> Response:
        body = alias_move_request(request.data)
        move = model_rollback(
            owner=request.user,
            name=name,
            alias=body.alias,
            to_version=body.version,
            actor=request.user,
            reason=body.reason,
        )
        return Response(alias_move_to_dict(alias=move.alias, event=move.event))


class ModelAliasListApi(APIView):
    """A model's aliases and the versions they point at (a handful per model: one page)."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, name: str) -> Response:
        model = registered_model_get(owner=request.user, name=name)
        return Response(list_response([alias_to_dict(a) for a in alias_list(registered_model=model)], False))


class ModelAliasHistoryApi(APIView):
    """Every move of one alias, newest first: kind, from, to, who, why, when."""

    @extend_schema(parameters=_PAGE, responses=_OBJECT)
    def get(self, request: Request, name: str, alias: str) -> Response:
        model = registered_model_get(owner=request.user, name=name)
        alias_get(registered_model=model, alias=alias)
        after = request.query_params.get("after")
        if after and not after.isdigit():
            # Event ids are integers: anything else cannot be a cursor (and must not reach the DB).
            raise InvalidRequestError(
                f"Unknown cursor {after!r}: pass the id of an item from the previous page.",
                code="invalid_cursor",
                param="after",
            )
        events, has_more = paginate(alias_event_list(registered_model=model, alias=alias), request)
        return Response(list_response([alias_event_to_dict(e) for e in events], has_more))


class ModelVersionEvaluationApi(APIView):
    """``GET``: a version's evaluations, newest first. ``POST``: queue one on a dataset (202)."""

    @extend_schema(parameters=_PAGE, responses=_OBJECT)
    def get(self, request: Request, name: str, version: str) -> Response:
        row = _version(request, name, version)
        evaluations, has_more = paginate(evaluation_list(version=row), request)
        return Response(list_response([evaluation_to_dict(e, examples=False) for e in evaluations], has_more))

    @_QUEUE
    @idempotent
    def post(self, request: Request, name: str, version: str) -> Response:
        row = _version(request, name, version)
        body = evaluation_request(request.data)
        dataset = evaluation_dataset_get(owner=request.user, file_id=body.file)
        evaluation = evaluation_create(
            owner=request.user, version=row, dataset=dataset, options=body.options, queue=body.queue
        )
        return Response(evaluation_to_dict(evaluation), status=202)


class EvaluationDetailApi(APIView):
    """One evaluation: status, metrics and the per-example predictions once it finished."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, evaluation_id: str) -> Response:
        return Response(evaluation_to_dict(evaluation_get(owner=request.user, evaluation_id=evaluation_id)))


class ModelComparisonCreateApi(APIView):
    """Queue an A/B comparison of two versions of a model (either side may be ``"base"``): 202."""

    @_QUEUE
    @idempotent
    def post(self, request: Request, name: str) -> Response:
        body = comparison_request(request.data)
        sides: dict[str, Any] = {}
        for param, number in (("version_a", body.version_a), ("version_b", body.version_b)):
            sides[param] = (
                None
                if number is None
                else model_version_get(owner=request.user, name=name, version=number, param=param)
            )
        dataset = evaluation_dataset_get(owner=request.user, file_id=body.file)
        comparison = comparison_create(
            owner=request.user, dataset=dataset, options=body.options, queue=body.queue, **sides
        )
        return Response(comparison_to_dict(comparison), status=202)


class ComparisonDetailApi(APIView):
    """One comparison: the per-metric table with deltas and win/tie/loss of ``b`` against ``a``."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, comparison_id: str) -> Response:
        return Response(comparison_to_dict(comparison_get(owner=request.user, comparison_id=comparison_id)))


class MarkdownRenderer(BaseRenderer):
    """Lets a client ask for ``Accept: text/markdown``; an error body is still JSON text."""

    media_type = "text/markdown"
    format = "md"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if isinstance(data, str):
            return data.encode(self.charset)
        return JSONRenderer().render(data)


class ComparisonReportApi(APIView):
    """The comparison as a Markdown document (``text/markdown``): the table, the outcomes, examples."""

    renderer_classes = [JSONRenderer, MarkdownRenderer]

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # An error is the JSON error body labelled application/json, whatever the client asked
        # for (``Accept: text/markdown``, ``?format=md``): clients parse errors by media type.
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(responses={(200, "text/markdown"): OpenApiResponse(OpenApiTypes.STR)})
    def get(self, request: Request, comparison_id: str) -> HttpResponse:
        comparison = comparison_get(owner=request.user, comparison_id=comparison_id)
        return HttpResponse(comparison_markdown(comparison), content_type="text/markdown; charset=utf-8")
