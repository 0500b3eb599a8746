"""Tuning job endpoints: thin views over ``tunings.services.jobs`` / ``state`` and ``tunings.selectors.jobs``.

Three route families share these views (see ``tunings/job_urls.py`` and docs/api.md):
seed style (``/v1/tunings.create`` ...), resource style (``/v1/tunings/{id}``) and OpenAI style
(``/v1/fine_tuning/jobs/{id}``). Every POST honours ``Idempotency-Key``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tuninglab.idempotency import HEADER, idempotent
from tuninglab.pagination import list_response, paginate
from tunings.models import TuningJob
from tunings.selectors.jobs import (
    checkpoint_list,
    job_event_list,
    tuning_job_get,
    tuning_job_list,
    tuning_job_queue_info,
)
from tunings.serializers.job_request import job_spec_from_payload
from tunings.serializers.jobs import checkpoint_to_dict, event_to_dict, job_status_to_dict, job_to_dict
from tunings.services.jobs import tuning_job_create
from tunings.services.state import tuning_job_cancel

# Objects are documented in docs/api.md; the schema names the operations and their parameters.
_OBJECT = OpenApiTypes.OBJECT
_PAGE = [OpenApiParameter("after", str), OpenApiParameter("limit", int)]
_FILTERS = [*_PAGE, OpenApiParameter("status", str), OpenApiParameter("model", str)]
_CREATE = extend_schema(request=_OBJECT, responses=_OBJECT)


def _job_body(job: TuningJob) -> dict[str, Any]:
    """One job's JSON, its queue position read the same way as on a list page."""
    return job_to_dict(job, queue_info=tuning_job_queue_info(jobs=[job])[job.id])


def _create(request: Request, status: int) -> Response:
    spec = job_spec_from_payload(request.data)
    job = tuning_job_create(owner=request.user, spec=spec, idempotency_key=request.headers.get(HEADER))
    return Response(_job_body(job), status=status)


def _list(request: Request) -> Response:
    jobs, has_more = paginate(tuning_job_list(owner=request.user, query_params=request.query_params), request)
    # Queue positions for the whole page at once: a few queries per queue, not per row.
    queue_info = tuning_job_queue_info(jobs=jobs)
    return Response(list_response([job_to_dict(job, queue_info=queue_info[job.id]) for job in jobs], has_more))


class JobCreateApi(APIView):
    """Create a job (validated, queued, dispatched after commit). 201 on our routes, 200 on OpenAI's."""

    created_status = 201

    @_CREATE
    @idempotent
    def post(self, request: Request) -> Response:
        return _create(request, self.created_status)


class JobListApi(APIView):
    """The caller's jobs, newest first; filters ``status``, ``model``, ``metadata[key]=value``."""

    @extend_schema(parameters=_FILTERS, responses=_OBJECT)
    def get(self, request: Request) -> Response:
        return _list(request)


class JobCollectionApi(APIView):
    """One URL, two operations: ``GET`` lists (as JobListApi), ``POST`` creates (as JobCreateApi)."""

    created_status = 201

    @extend_schema(parameters=_FILTERS, responses=_OBJECT)
    def get(self, request: Request) -> Response:
        return _list(request)

    @_CREATE
    @idempotent
    def post(self, request: Request) -> Response:
        return _create(request, self.created_status)


class JobDetailApi(APIView):
    """One job by path id."""

    @extend_schema(responses=_OBJECT)
    def get(self, request: Request, job_id: str) -> Response:
        return Response(_job_body(tuning_job_get(owner=request.user, job_id=job_id)))


class JobStatusApi(APIView):
    """``GET /v1/tunings.get?job_id=``: the job object with ``progress`` as ``"60%"``."""

    @extend_schema(parameters=[OpenApiParameter("job_id", str, required=True)], responses=_OBJECT)
    def get(self, request: Request) -> Response:
        job = tuning_job_get(owner=request.user, job_id=request.query_params.get("job_id"))
        return Response(job_status_to_dict(job, queue_info=tuning_job_queue_info(jobs=[job])[job.id]))


class JobCancelApi(APIView):
    """Cancel by path id: at once when not started, at the next step boundary when running; 409 when finished."""

    @extend_schema(request=None, responses=_OBJECT)
    @idempotent
    def post(self, request: Request, job_id: str) -> Response:
        job = tuning_job_get(owner=request.user, job_id=job_id)
        job = tuning_job_cancel(job=job, by=request.user)
        return Response(_job_body(job))


class JobCancelByBodyApi(APIView):
    """``POST /v1/tunings.cancel {"job_id"}``: same as JobCancelApi."""

    @extend_schema(request=_OBJECT, responses=_OBJECT)
    @idempotent
    def post(self, request: Request) -> Response:
        job_id = request.data.get("job_id") if hasattr(request.data, "get") else None
        job = tuning_job_get(owner=request.user, job_id=job_id)
        job = tuning_job_cancel(job=job, by=request.user)
        return Response(_job_body(job))


class JobEventListApi(APIView):
    """A job's events, newest first, paginated with ``after``/``limit``."""

    @extend_schema(parameters=_PAGE, responses=_OBJECT)
    def get(self, request: Request, job_id: str) -> Response:
        job = tuning_job_get(owner=request.user, job_id=job_id)
        events, has_more = paginate(job_event_list(job=job), request)
        return Response(list_response([event_to_dict(event) for event in events], has_more))


class JobCheckpointListApi(APIView):
    """A job's checkpoints, highest step first, paginated with ``after``/``limit``."""

    @extend_schema(parameters=_PAGE, responses=_OBJECT)
    def get(self, request: Request, job_id: str) -> Response:
        job = tuning_job_get(owner=request.user, job_id=job_id)
        checkpoints, has_more = paginate(checkpoint_list(job=job), request)
        return Response(list_response([checkpoint_to_dict(ckpt, job) for ckpt in checkpoints], has_more))
