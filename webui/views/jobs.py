"""Job pages: the owner's job list, one job with live curves and events, its cancel button."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from tuninglab.errors import InvalidRequestError
from tunings.models import TuningJob
from tunings.selectors.curves import job_curve_points
from tunings.selectors.jobs import checkpoint_list, tuning_job_get, tuning_job_list, tuning_job_queue_info
from tunings.services.state import tuning_job_cancel
from webui import presenters
from webui.views.common import error_text, errors_as_messages, int_param, owned_or_404

JOBS_PER_PAGE = 50


@require_safe
@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """``GET /jobs/``: the user's jobs, newest first, 50 a page, optionally filtered by ``status``."""
    try:
        jobs = tuning_job_list(owner=request.user, query_params=request.GET)
    except InvalidRequestError as exc:
        messages.error(request, error_text(exc))
        jobs = tuning_job_list(owner=request.user, query_params={})
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    queue = tuning_job_queue_info(jobs=page.object_list)
    rows = [{"job": job, "queue_position": queue[job.id].position} for job in page.object_list]
    return render(
        request,
        "webui/job_list.html",
        {"page": page, "rows": rows, "statuses": TuningJob.Status.values, "status": request.GET.get("status", "")},
    )


@require_safe
@login_required
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """``GET /jobs/<id>/``: state, progress, charts, events (``?before=<seq>`` pages older ones), checkpoints."""
    job = owned_or_404(tuning_job_get, owner=request.user, job_id=job_id)
    bound = presenters.newest_event_seq(job)
    before = int_param(request.GET.get("before"), minimum=1)
    curves = job_curve_points(job=job, until_seq=bound)
    queue = tuning_job_queue_info(jobs=[job])[job.id]
    live = {
        "live_url": reverse("webui:job-live", kwargs={"job_id": job.id}),
        "last_seq": str(bound),  # text: beyond 2**53, see presenters.event_row
        "terminal": job.is_terminal,
        "append_events": before is None,  # an older page of the log stays as it is
        "train": curves["train"],
        "eval": curves["eval"],
        "lr": curves["lr"],
    }
    context = {
        "job": job,
        "progress": presenters.job_progress(job),
        "queue": queue,
        "loss_svg": presenters.loss_chart_svg(curves),
        "lr_svg": presenters.lr_chart_svg(curves),
        "train_points": len(curves["train"]),
        "eval_points": len(curves["eval"]),
        "events": presenters.job_event_page(job, before_seq=before, until_seq=bound),
        "before": before,
        "checkpoints": [presenters.checkpoint_row(c, job) for c in checkpoint_list(job=job)],
        "config": presenters.job_config(job, queue),
        "error": presenters.job_error(job),
        "result": presenters.job_result_version(job),
        "live": live,
    }
    return render(request, "webui/job_detail.html", context)


@never_cache
@require_safe
@login_required
def job_live(request: HttpRequest, job_id: str) -> JsonResponse:
    """``GET /jobs/<id>/live.json?after_seq=N``: state plus the points and events after ``N``."""
    job = owned_or_404(tuning_job_get, owner=request.user, job_id=job_id)
    after = int_param(request.GET.get("after_seq"), default=0)
    return JsonResponse(presenters.job_live(job, after_seq=after or 0))


@require_safe
@login_required
def job_curves_svg(request: HttpRequest, job_id: str) -> HttpResponse:
    """``GET /jobs/<id>/curves.svg``: the loss (train + eval) and learning-rate charts, as a download."""
    job = owned_or_404(tuning_job_get, owner=request.user, job_id=job_id)
    response = HttpResponse(presenters.curves_document(job), content_type="image/svg+xml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{job.id}-curves.svg"'
    # An SVG may carry script; opened from our origin it must not run any.
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_POST
@login_required
def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    """``POST /jobs/<id>/cancel``: cancel (queued: at once; running: at the next step); 409 → a message."""
    job = owned_or_404(tuning_job_get, owner=request.user, job_id=job_id)
    with errors_as_messages(request):
        job = tuning_job_cancel(job=job, by=request.user)
        if job.status == TuningJob.Status.CANCELLED:
            messages.success(request, f"Job {job.id} cancelled.")
        else:
            messages.success(request, f"Cancellation of job {job.id} requested; it stops at the next step.")
    return redirect("webui:job-detail", job_id=job.id)
