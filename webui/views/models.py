"""Model pages: the owner's registered models, one model's versions, aliases, A/B route and traffic."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from registry.selectors import alias_event_list, alias_list, registered_model_get
from registry.services.aliases import DEFAULT_ALIAS, model_promote, model_rollback
from tuninglab.errors import InvalidRequestError
from webui import presenters
from webui.views.common import errors_as_messages, int_param, owned_or_404

MODELS_PER_PAGE = 50
VERSIONS_PER_PAGE = 50
ALIAS_EVENTS_SHOWN = 50


@require_safe
@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    """``GET /models/``: the user's registered models with version counts and aliases."""
    page = Paginator(presenters.model_list(owner=request.user), MODELS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "webui/model_list.html", {"page": page})


@require_safe
@login_required
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    """``GET /models/<name>/``: versions side by side, aliases and their history, the A/B route and report."""
    registered = owned_or_404(registered_model_get, owner=request.user, name=name)
    page = Paginator(presenters.version_rows(registered), VERSIONS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "model": registered,
        "page": page,
        "table": presenters.versions_table(list(page.object_list)),
        "aliases": list(alias_list(registered_model=registered)),
        "alias_events": list(alias_event_list(registered_model=registered)[:ALIAS_EVENTS_SHOWN]),
        "report": presenters.model_live(owner=request.user, registered=registered),
        "default_alias": DEFAULT_ALIAS,
        "live_config": {"live_url": reverse("webui:model-live", kwargs={"name": registered.name})},
    }
    return render(request, "webui/model_detail.html", context)


@never_cache
@require_safe
@login_required
def model_live(request: HttpRequest, name: str) -> JsonResponse:
    """``GET /models/<name>/live.json``: the route and the serving versions' traffic counters, now."""
    registered = owned_or_404(registered_model_get, owner=request.user, name=name)
    return JsonResponse(presenters.model_live(owner=request.user, registered=registered))


@require_POST
@login_required
def model_promote_view(request: HttpRequest, name: str) -> HttpResponse:
    """``POST /models/<name>/promote`` (version, alias, reason): move the alias; refusals become messages."""
    registered = owned_or_404(registered_model_get, owner=request.user, name=name)
    version = int_param(request.POST.get("version"), minimum=1)
    alias = request.POST.get("alias", "").strip() or DEFAULT_ALIAS
    with errors_as_messages(request):
        if version is None:
            raise InvalidRequestError("Choose a version number to promote.", code="invalid_version", param="version")
        move = model_promote(
            owner=request.user,
            name=registered.name,
            version=version,
            alias=alias,
            actor=request.user,
            reason=request.POST.get("reason", "").strip(),
        )
        if move.event is None:
            messages.info(request, f"{registered.name}@{alias} already points at v{version}.")
        else:
            messages.success(request, f"{registered.name}@{alias} now points at v{version}.")
    return redirect("webui:model-detail", name=registered.name)


@require_POST
@login_required
def model_rollback_view(request: HttpRequest, name: str) -> HttpResponse:
    """``POST /models/<name>/rollback`` (alias, optional to_version, reason): move the alias back."""
    registered = owned_or_404(registered_model_get, owner=request.user, name=name)
    alias = request.POST.get("alias", "").strip() or DEFAULT_ALIAS
    raw_target = request.POST.get("to_version", "").strip()
    with errors_as_messages(request):
        to_version = int_param(raw_target, minimum=1) if raw_target else None
        if raw_target and to_version is None:
            raise InvalidRequestError(
                f"Invalid version {raw_target!r}: a version number, or empty for the previous one.",
                code="invalid_version",
                param="to_version",
            )
        move = model_rollback(
            owner=request.user,
            name=registered.name,
            alias=alias,
            to_version=to_version,
            actor=request.user,
            reason=request.POST.get("reason", "").strip(),
        )
        target = move.alias.version.version
        if move.event is None:
            messages.info(request, f"{registered.name}@{alias} already points at v{target}.")
        else:
            messages.success(request, f"{registered.name}@{alias} rolled back to v{target}.")
    return redirect("webui:model-detail", name=registered.name)
